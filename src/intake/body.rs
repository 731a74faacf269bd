//! Reading an event's body: whole, within `--body-timeout`, under the event's size
//! limit and the bytes all requests may hold at once (`--max-body-bytes-in-flight`).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub enum BodyError {
    TooLarge,
    Unreadable(String),
    /// Not all there within `--body-timeout`.
    TimedOut,
    /// The bound on bodies being read at once is reached.
    Busy,
}

/// How much of an oversized body is read and thrown away so the client, still
/// sending, gets to see the 413 rather than a reset connection.
const DRAIN_BYTES: usize = 8 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a body waits for room under `--max-body-bytes-in-flight` before 503.
const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Bounds on reading event bodies, shared by every request.
pub struct BodyGate {
    pub timeout: std::time::Duration,
    /// Body bytes held by requests being read or handled, at most `total`.
    budget: Arc<Semaphore>,
    pub total: usize,
}

impl BodyGate {
    pub fn new(timeout: std::time::Duration, total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyGate {
            timeout,
            budget: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Room for `n` more bytes: at once, or within [`BUDGET_WAIT`].
    async fn reserve(&self, n: usize) -> Option<OwnedSemaphorePermit> {
        let permits = u32::try_from(n).ok().filter(|_| n <= self.total)?;
        if let Ok(p) = self.budget.clone().try_acquire_many_owned(permits) {
            return Some(p);
        }
        tokio::time::timeout(BUDGET_WAIT, self.budget.clone().acquire_many_owned(permits))
            .await
            .ok()?
            .ok()
    }
}

/// A body read whole, holding its share of the body budget until dropped.
pub struct HeldBody {
    bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

impl std::ops::Deref for HeldBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

pub fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a body up to `limit` bytes within the gate's deadline; an overflow is
/// `TooLarge`. Its room under the budget is taken before it is read (its announced
/// length, else its limit), so memory follows the budget, never what a client
/// announces; room a body without a length did not use is given back.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    gate: &BodyGate,
) -> Result<HeldBody, BodyError> {
    let room = announced_length(headers)
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(limit.min(gate.total))
        .min(limit);
    match tokio::time::timeout(gate.timeout, collect(body, limit, room, gate)).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::TimedOut),
    }
}

async fn collect(mut body: Body, limit: usize, room: usize, gate: &BodyGate) -> Result<HeldBody, BodyError> {
    let mut held = gate.reserve(room).await.ok_or(BodyError::Busy)?;
    let bytes = match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            drain(body).await;
            return Err(BodyError::TooLarge);
        }
        Err(e) => return Err(BodyError::Unreadable(e.to_string())),
    };
    // Only where the budget is smaller than the limit (never with the daemon's flags).
    if bytes.len() > room {
        return Err(BodyError::Busy);
    }
    drop(held.split(room - bytes.len()));
    Ok(HeldBody { bytes, _budget: held })
}

/// Reads and discards what is left of a request body we answer without using, bounded
/// in bytes and time, so the client can read our answer.
///
/// Boxed: only refusals drain, and its timer would otherwise take room in every request
/// future that may refuse, which hyper keeps for as long as each connection lives.
pub fn drain(mut body: Body) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let mut seen = 0usize;
        let read = async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > DRAIN_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, read).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
            .collect::<Vec<_>>();
        Body::from_stream(futures_util::stream::iter(frames))
    }

    fn gate() -> BodyGate {
        BodyGate::new(std::time::Duration::from_secs(30), 1024)
    }

    #[tokio::test]
    async fn bodies_are_read_whole_in_one_piece_or_many() {
        let none = HeaderMap::new();
        let gate = gate();
        for parts in [
            &[&b"{\"type\":\"sync\"}"[..]][..],
            &[b"{\"ty", b"", b"pe\":", b"\"sync\"}"],
        ] {
            let body = read_body(&none, chunked(parts), 64, &gate).await;
            assert_eq!(
                body.ok().as_deref(),
                Some(&b"{\"type\":\"sync\"}"[..]),
                "{parts:?}"
            );
        }
        let over = read_body(&none, chunked(&[b"0123456789", b"0123456789"]), 15, &gate).await;
        assert!(
            matches!(over, Err(BodyError::TooLarge)),
            "the limit counts every piece"
        );
        let exact = read_body(&none, chunked(&[b"0123456789", b"01234"]), 15, &gate).await;
        assert_eq!(exact.ok().as_deref(), Some(&b"012345678901234"[..]));
    }

    #[tokio::test]
    async fn bodies_being_read_share_one_byte_budget() {
        let none = HeaderMap::new();
        let gate = BodyGate::new(std::time::Duration::from_secs(30), 12);
        let held = read_body(&none, chunked(&[b"01234567"]), 64, &gate).await;
        let held = held.ok().expect("within the budget");
        let busy = read_body(&none, chunked(&[b"0123", b"4567"]), 64, &gate).await;
        assert!(
            matches!(busy, Err(BodyError::Busy)),
            "over the budget while the first is held"
        );
        drop(held);
        let again = read_body(&none, chunked(&[b"0123", b"4567"]), 64, &gate).await;
        assert_eq!(
            again.ok().as_deref(),
            Some(&b"01234567"[..]),
            "room again once released"
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out() {
        use futures_util::StreamExt;
        let mut announced = HeaderMap::new();
        announced.insert(header::CONTENT_LENGTH, HeaderValue::from_static("33554432"));
        let gate = BodyGate::new(std::time::Duration::from_millis(200), 64 * 1024 * 1024);
        let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{}"))])
            .chain(futures_util::stream::pending());
        let read = read_body(&announced, Body::from_stream(stalled), 64 * 1024 * 1024, &gate).await;
        assert!(matches!(read, Err(BodyError::TimedOut)));
        assert_eq!(
            gate.budget.available_permits(),
            gate.total,
            "its bytes are released"
        );
    }
}
