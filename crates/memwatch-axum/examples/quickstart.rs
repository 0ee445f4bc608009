//! The quick start of crates/memwatch/README.md, verbatim: an axum service with memwatch.
//! `ADMIN_TOKEN=secret cargo run -p memwatch-axum --example quickstart`, then
//! `curl -H 'authorization: Bearer secret' localhost:3000/debug/memory`.

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new(); // jemalloc, counted
memwatch::malloc_conf!(); // sampled heap profiling on; MALLOC_CONF=prof:false turns it off

fn main() -> Result<(), Box<dyn std::error::Error>> {
    eprintln!("{}", memwatch::apply_backtrace_policy()); // first, while single-threaded
    let mw = memwatch::Memwatch::builder().start()?; // post-mortem, then the flight recorder
    let admin = memwatch_axum::bearer_token(std::env::var("ADMIN_TOKEN")?);
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello\n" }))
        .merge(memwatch_axum::Routes::new(mw.clone(), admin).router()) // /debug/*, /metrics
        .layer(memwatch_axum::SoftLimitLayer::new(mw)); // 503 over the soft limit
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    memwatch_axum::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        Ok(axum::serve(listener, app).await?)
    })
}
