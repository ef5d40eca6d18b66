//! Helpers shared by the CLI tests.

use std::net::SocketAddr;

/// Serves `app` on a free loopback port from a runtime of its own; the server runs as long as
/// the returned runtime lives.
pub fn serve(app: axum::Router) -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, runtime)
}
