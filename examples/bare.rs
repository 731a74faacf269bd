//! The ingest ceiling on this machine: a bare axum handler that answers 200 to
//! every POST, loaded exactly as the daemon is by `examples/bench.rs`.

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    let app = axum::Router::new().fallback(|_body: axum::body::Bytes| async { "" });
    axum::serve(listener, app).await.expect("serve");
}
