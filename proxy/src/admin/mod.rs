//! The admin HTTP listener (hyper): health and the topology as JSON. It runs
//! beside the data path and shares nothing with it but the topology.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Context;

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(req, &ctx).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && !authorized(&req, ctx) {
        return text(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required (Authorization: Bearer <admin.token>)\n",
        );
    }
    let path = req.uri().path().to_string();
    if let (&Method::POST, Some(shard)) = (
        req.method(),
        path.strip_prefix("/v1/shards/")
            .and_then(|rest| rest.strip_suffix("/switchover")),
    ) {
        // `?target=host:port`, optional.
        let target = query(&req, "target");
        return match ctx.switchover(shard, target).await {
            Ok(done) => text(StatusCode::OK, &format!("{done}\n")),
            Err(e) if e.contains("no shard named") || e.contains("is not a node") => {
                text(StatusCode::NOT_FOUND, &format!("{e}\n"))
            }
            Err(e) => text(StatusCode::CONFLICT, &format!("{e}\n")),
        };
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let missing: Vec<&str> = ctx
                .topology
                .shards
                .iter()
                .filter(|s| s.primary().is_none())
                .map(|s| s.name.as_str())
                .collect();
            if missing.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "no reachable primary for shard(s): {}\n",
                        missing.join(", ")
                    ),
                )
            }
        }
        (&Method::GET, "/v1/topology") => json(&ctx.topology.snapshot()),
        (&Method::GET, "/v1/events") => {
            // `?after=N`: only events newer than sequence number N.
            let after = query(&req, "after")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            json(&ctx.events.since(after))
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Mutating requests need the admin token when one is configured.
fn authorized(req: &Request<Incoming>, ctx: &Context) -> bool {
    let Some(token) = &ctx.config.admin.token else {
        return true;
    };
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| crate::client::constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// One query parameter, unescaped only for `%3A` (the colon in host:port).
fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let value = kv.strip_prefix(name)?.strip_prefix('=')?;
            Some(value.replace("%3A", ":").replace("%3a", ":"))
        })
    })
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
