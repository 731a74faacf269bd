//! JSON-RPC client over the websocket fluxd opened to us.
//!
//! fluxd dials us, but on that connection it is the *server*: it runs Go's `net/rpc`
//! with the JSON-RPC 1.0 codec (`{"method","params":[arg],"id"}` in,
//! `{"id","result","error"}` out). It serves calls concurrently, so replies come back
//! in any order and are matched by id. Each call has its own timeout; a reply that
//! comes after it is dropped.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Calls waiting for the session task to send them; a poller makes one at a time.
const CALL_QUEUE: usize = 16;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RpcError {
    #[error("no fluxd websocket is connected")]
    NotConnected,
    #[error("the fluxd websocket closed before the reply")]
    Disconnected,
    #[error("fluxd did not answer within {0:?}")]
    Timeout(Duration),
    /// `rpc: can't find method …`: this fluxd does not serve the method.
    #[error("fluxd does not serve the method: {0}")]
    MethodMissing(String),
    /// The reply's `error` string (transport or internal errors in fluxd).
    #[error("fluxd answered with an error: {0}")]
    Remote(String),
}

impl RpcError {
    /// Bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RpcError::NotConnected => "not_connected",
            RpcError::Disconnected => "disconnected",
            RpcError::Timeout(_) => "timeout",
            RpcError::MethodMissing(_) => "method_missing",
            RpcError::Remote(_) => "remote_error",
        }
    }
}

type Reply = oneshot::Sender<Result<Box<RawValue>, RpcError>>;

/// A call on its way to the session that owns the websocket.
pub struct Call {
    method: &'static str,
    /// The one argument; sent as `"params":[param]`.
    param: Value,
    reply: Reply,
}

struct Connection {
    id: u64,
    calls: mpsc::Sender<Call>,
}

/// The current fluxd connection, if any. fluxd keeps one; after a reconnect the newest
/// connection is used.
#[derive(Default)]
pub struct FluxdLink {
    current: Mutex<Option<Connection>>,
    next_connection: AtomicU64,
}

impl FluxdLink {
    /// Registers a new connection; its session serves the returned calls.
    pub fn attach(&self) -> (u64, mpsc::Receiver<Call>) {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        *self.lock() = Some(Connection { id, calls: tx });
        (id, rx)
    }

    /// Forgets connection `id`, unless a newer one replaced it already.
    pub fn detach(&self, id: u64) {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }

    /// The id of the connection calls go to now.
    pub fn connection(&self) -> Option<u64> {
        self.lock().as_ref().map(|c| c.id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `method` with one argument and returns the raw `result`.
    pub async fn call(
        &self,
        method: &'static str,
        param: Value,
        timeout: Duration,
    ) -> Result<Box<RawValue>, RpcError> {
        let calls = self
            .lock()
            .as_ref()
            .map(|c| c.calls.clone())
            .ok_or(RpcError::NotConnected)?;
        let (reply, answer) = oneshot::channel();
        let call = Call { method, param, reply };
        let exchange = async {
            calls.send(call).await.map_err(|_| RpcError::Disconnected)?;
            answer.await.unwrap_or(Err(RpcError::Disconnected))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RpcError::Timeout(timeout)))
    }
}

/// The session's side: ids for outgoing calls, and the calls waiting for replies.
#[derive(Default)]
pub struct Calls {
    next_id: u64,
    waiting: HashMap<u64, Reply>,
}

#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// A reply was handed to its caller.
    Answered,
    /// A reply to nobody: its caller gave up (timeout) or it was never ours.
    Unmatched(String),
    /// Not a JSON-RPC reply at all.
    Malformed(String),
}

#[derive(Deserialize)]
struct WireReply {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Value>,
}

impl Calls {
    /// Registers `call` and returns the frame to send for it.
    pub fn frame(&mut self, call: Call) -> Vec<u8> {
        // Callers that gave up (timed out) leave their slot behind; sweep them here.
        self.waiting.retain(|_, r| !r.is_closed());
        let id = self.next_id;
        self.next_id += 1;
        let frame = serde_json::json!({ "method": call.method, "params": [call.param], "id": id });
        self.waiting.insert(id, call.reply);
        serde_json::to_vec(&frame).unwrap_or_default()
    }

    /// Matches a frame from fluxd to the call it answers.
    pub fn receive(&mut self, frame: &[u8]) -> Incoming {
        let reply: WireReply = match serde_json::from_slice(frame) {
            Ok(r) => r,
            Err(e) => return Incoming::Malformed(e.to_string()),
        };
        let Some(id) = reply.id.as_ref().and_then(Value::as_u64) else {
            return Incoming::Unmatched(format!("reply id {:?}", reply.id));
        };
        let Some(waiting) = self.waiting.remove(&id) else {
            return Incoming::Unmatched(format!("reply id {id}"));
        };
        let outcome = match reply.error {
            // A null `result` decodes as None; the default raw value is `null` again.
            None | Some(Value::Null) => Ok(reply.result.unwrap_or_default()),
            Some(Value::String(e)) if e.is_empty() => Ok(reply.result.unwrap_or_default()),
            Some(Value::String(e)) if e.starts_with("rpc: can't find") => Err(RpcError::MethodMissing(e)),
            Some(Value::String(e)) => Err(RpcError::Remote(e)),
            Some(other) => Err(RpcError::Remote(other.to_string())),
        };
        let _ = waiting.send(outcome);
        Incoming::Answered
    }

    /// The connection is gone: every waiting caller learns it now, not at its timeout.
    pub fn disconnected(&mut self) {
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(RpcError::Disconnected));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &'static str) -> (Call, oneshot::Receiver<Result<Box<RawValue>, RpcError>>) {
        let (reply, rx) = oneshot::channel();
        (
            Call {
                method,
                param: Value::String(String::new()),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn requests_are_json_rpc_1_with_one_param_and_fresh_ids() {
        let mut calls = Calls::default();
        let (a, _ra) = call("RPCServer.ListServices");
        let (b, _rb) = call("RPCServer.ListServices");
        let fa: Value = serde_json::from_slice(&calls.frame(a)).unwrap();
        let fb: Value = serde_json::from_slice(&calls.frame(b)).unwrap();
        assert_eq!(
            fa,
            serde_json::json!({"method": "RPCServer.ListServices", "params": [""], "id": 0})
        );
        assert_eq!(fb["id"], 1);
        assert!(fa.get("jsonrpc").is_none(), "Go's codec is JSON-RPC 1.0");
    }

    #[tokio::test]
    async fn replies_out_of_order_reach_their_own_callers() {
        let mut calls = Calls::default();
        let (a, ra) = call("RPCServer.ListServices");
        let (b, rb) = call("RPCServer.Version");
        calls.frame(a);
        calls.frame(b);
        assert_eq!(
            calls.receive(br#"{"id":1,"result":"1.25.4","error":null}"#),
            Incoming::Answered
        );
        assert_eq!(
            calls.receive(br#"{"id":0,"result":{"Result":null,"ApplicationError":null},"error":null}"#),
            Incoming::Answered
        );
        assert_eq!(rb.await.unwrap().unwrap().get(), r#""1.25.4""#);
        assert_eq!(
            ra.await.unwrap().unwrap().get(),
            r#"{"Result":null,"ApplicationError":null}"#
        );
    }

    #[tokio::test]
    async fn error_strings_become_errors_and_missing_methods_are_told_apart() {
        let mut calls = Calls::default();
        let (a, ra) = call("RPCServer.ListServicesWithOptions");
        let (b, rb) = call("RPCServer.ListServices");
        calls.frame(a);
        calls.frame(b);
        calls.receive(
            br#"{"id":0,"result":null,"error":"rpc: can't find method RPCServer.ListServicesWithOptions"}"#,
        );
        calls.receive(br#"{"id":1,"result":null,"error":"getting workloads from cluster: boom"}"#);
        assert!(matches!(ra.await.unwrap(), Err(RpcError::MethodMissing(_))));
        assert_eq!(
            rb.await.unwrap().unwrap_err(),
            RpcError::Remote("getting workloads from cluster: boom".into())
        );
    }

    #[tokio::test]
    async fn unknown_ids_garbage_and_disconnects_are_handled() {
        let mut calls = Calls::default();
        let (a, ra) = call("RPCServer.ListServices");
        calls.frame(a);
        assert!(matches!(calls.receive(b"not json"), Incoming::Malformed(_)));
        assert!(matches!(
            calls.receive(br#"{"id":7,"result":{},"error":null}"#),
            Incoming::Unmatched(_)
        ));
        assert!(matches!(
            calls.receive(br#"{"id":"x","result":{},"error":null}"#),
            Incoming::Unmatched(_)
        ));
        calls.disconnected();
        assert_eq!(ra.await.unwrap().unwrap_err(), RpcError::Disconnected);
    }

    #[tokio::test]
    async fn a_call_without_connection_or_reply_fails_in_time() {
        let link = FluxdLink::default();
        let t = Duration::from_millis(20);
        assert_eq!(
            link.call("RPCServer.Ping", Value::Null, t).await.unwrap_err(),
            RpcError::NotConnected
        );
        let (id, _calls) = link.attach();
        assert_eq!(
            link.call("RPCServer.Ping", Value::Null, t).await.unwrap_err(),
            RpcError::Timeout(t)
        );
        let (newer, _calls2) = link.attach();
        link.detach(id);
        assert_eq!(
            link.connection(),
            Some(newer),
            "an old session leaving keeps the new one"
        );
        link.detach(newer);
        assert_eq!(link.connection(), None);
    }
}
