// The floor of any hyper-based relay, for `benches/serve_burst.sh`: the request body passed to
// one upstream URL and the answer streamed back byte for byte (no parsing, no engine, no ledger).
// `floor-relay LISTEN_ADDR UPSTREAM_URL`; built on its own: `cargo build --release --manifest-path benches/floor_relay/Cargo.toml`.
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = args[1].clone();
    let upstream: hyper::Uri = args[2].parse().unwrap();
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(conn);
    let l = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!("floor listening");
    loop {
        let (s, _) = l.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let client = client.clone();
        let up = upstream.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let client = client.clone();
                let up = up.clone();
                async move {
                    if req.uri().path() == "/healthz" {
                        return Ok::<_, Infallible>(Response::new(BoxBody::new(
                            Full::new(Bytes::from_static(b"ok")).map_err(
                                |e| -> Box<dyn std::error::Error + Send + Sync> { match e {} },
                            ),
                        )));
                    }
                    let (parts, body) = req.into_parts();
                    let b = body
                        .collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    let mut r = Request::builder()
                        .method(parts.method)
                        .uri(up)
                        .header("content-type", "application/json")
                        .body(Full::new(b))
                        .unwrap();
                    r.headers_mut()
                        .insert("authorization", "Bearer sk-mock".parse().unwrap());
                    let resp = client.request(r).await.unwrap();
                    let (p, b) = resp.into_parts();
                    Ok(Response::from_parts(
                        p,
                        BoxBody::new(b.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> {
                            Box::new(e)
                        })),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}
