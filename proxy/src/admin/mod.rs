//! The admin HTTP listener (hyper): health, the topology, events and
//! policies as JSON, Prometheus metrics, the live dashboard. It runs
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

use crate::net::Stream;
use crate::operate::OpError;
use crate::policy::file::MAX_PLUGIN_BYTES;
use tokio::sync::watch;

use crate::context::Context;

mod coordination_metrics;
mod memory_metrics;
pub mod metrics;
mod node_metrics;
mod policy_metrics;
mod probe_metrics;
mod prom;
mod shard_metrics;
mod slot_metrics;
mod slots;
mod views;

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let admin = &ctx.config.admin;
    let slots = slots::Slots::new(admin.max_connections);
    let header_timeout = std::time::Duration::from_millis(admin.header_timeout_ms.max(1));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        // Past the cap, the idlest connection makes room, or (every one
        // busy answering) the new one is closed at once: half-open admin
        // connections cannot pile up, nor lock the probes out.
        let Some(mut slot) = slots.admit() else {
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            // The handshake counts against the header timeout: a
            // connection that never finishes it holds a slot no longer.
            let stream = match ctx.admin_tls.clone() {
                None => Stream::Tcp(stream),
                Some(tls) => {
                    let handshake = tokio::time::timeout(header_timeout, tls.accept(stream));
                    tokio::select! {
                        Ok(Ok(stream)) = handshake => stream,
                        _ = &mut slot.evicted => return,
                        else => return,
                    }
                }
            };
            let busy = slot.busy.clone();
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                let busy = busy.clone();
                async move {
                    busy.store(true, std::sync::atomic::Ordering::Release);
                    let response = handle(req, &ctx).await;
                    busy.store(false, std::sync::atomic::Ordering::Release);
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = &mut slot.evicted => {}
            }
            drop(slot);
        });
    }
}

/// Whether a `Host` header names this listener: an IP address, localhost,
/// or a name in `admin.allowed_hosts`. Anything else is a name someone
/// pointed here (DNS rebinding) and is refused.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Why a request is refused before it is looked at, if it is: a `Host`
/// this listener does not answer to, or a change (anything but GET) sent
/// by a page of another origin (a browser sends `Origin` then; a
/// same-origin page's `Origin` is its `Host`).
fn refused(req: &Request<Incoming>, ctx: &Context) -> Option<&'static str> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
    };
    let host = header(hyper::header::HOST);
    if host.is_some_and(|h| !host_allowed(h, &ctx.config.admin.allowed_hosts)) {
        return Some("the Host header does not name this listener (admin.allowed_hosts)\n");
    }
    if req.method() != Method::GET {
        if let Some(origin) = header(hyper::header::ORIGIN) {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if authority.is_none() || authority != host {
                return Some("cross-origin requests may not change anything\n");
            }
        }
    }
    None
}

/// Every route, one arm each: a long function, but a table a reader scans
/// to find an endpoint reads better than routes spread over helpers.
async fn handle(mut req: Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    // HEAD is GET without the body (hyper leaves the body out of the
    // answer to a HEAD request, and keeps its length): load balancers and
    // uptime checkers probe /healthz and /metrics that way.
    if req.method() == Method::HEAD {
        *req.method_mut() = Method::GET;
    }
    if let Some(why) = refused(&req, ctx) {
        return text(StatusCode::FORBIDDEN, why);
    }
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
        return answer(ctx.switchover(shard, target).await);
    }
    if let (&Method::POST, Some(shard)) = (
        req.method(),
        path.strip_prefix("/v1/shards/")
            .and_then(|rest| rest.strip_suffix("/promote")),
    ) {
        // `?node=host:port`: the operator's forced choice.
        let Some(node) = query(&req, "node") else {
            return text(
                StatusCode::BAD_REQUEST,
                "name the node to promote: ?node=host:port\n",
            );
        };
        return answer(ctx.force_promote(shard, node).await);
    }
    if let (&Method::POST, Some(shard)) = (
        req.method(),
        path.strip_prefix("/v1/shards/")
            .and_then(|rest| rest.strip_suffix("/resync")),
    ) {
        // `?node=host:port`: copy a fan-out node afresh.
        let node = query(&req, "node").unwrap_or_default();
        return answer(ctx.resync(shard, &node));
    }
    if req.method() == Method::POST && path == "/v1/slots/move" {
        // `?slots=8192-16383&to=shard[&rate=keys-per-second]`.
        let (Some(slots), Some(to)) = (query(&req, "slots"), query(&req, "to")) else {
            return text(
                StatusCode::BAD_REQUEST,
                "name the slots and the shard: ?slots=8192-16383&to=shard\n",
            );
        };
        let rate = query(&req, "rate")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        return answer(ctx.move_slots(&slots, &to, rate).await);
    }
    if let (&Method::DELETE, Some(instance)) =
        (req.method(), path.strip_prefix("/v1/coordination/members/"))
    {
        return answer(ctx.forget_instance(&percent_decode(instance)).await);
    }
    if req.method() == Method::POST && path == "/v1/reload" {
        return answer(ctx.reload_file().await);
    }
    if let Some(rest) = path.strip_prefix("/v1/policies/") {
        return policy(req, ctx, rest.to_string()).await;
    }
    match (req.method(), path.as_str()) {
        (&Method::GET, "/" | "/dashboard") => dashboard(),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            let missing: Vec<String> = ctx
                .topology
                .shards()
                .iter()
                .filter(|s| s.primary().is_none())
                .map(|s| match s.awaiting_operator() {
                    Some(why) => format!("{} (waiting for an operator: {why})", s.name),
                    None => s.name.clone(),
                })
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
        (&Method::GET, "/v1/coordination/peer") => match &ctx.coordination {
            Some(coordination) => json(&coordination.peer_status()),
            None => text(StatusCode::NOT_FOUND, "no [coordination]\n"),
        },
        (&Method::GET, "/v1/topology") => {
            let mut view = serde_json::to_value(ctx.topology.snapshot()).unwrap_or_default();
            if let Some(coordination) = &ctx.coordination {
                view["coordination"] =
                    serde_json::to_value(coordination.snapshot()).unwrap_or_default();
            }
            json(&view)
        }
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, &metrics::render(ctx));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/v1/policies") => json(&ctx.policies()),
        (&Method::GET, "/v1/doctor") => json(&ctx.doctor().await),
        (&Method::GET, "/v1/slots") => json(&views::slots(ctx)),
        (&Method::GET, "/v1/risks") => json(&views::risks(ctx)),
        (&Method::GET, "/v1/history") => {
            // `?after=MS`: only samples taken after that time.
            let after = query(&req, "after")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            json(&ctx.history.since(after))
        }
        (&Method::GET, "/v1/events") => {
            // `?after=N`: only events newer than sequence number N.
            let after = query(&req, "after")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            // `?instances=all`: every instance's, from etcd.
            match (&ctx.coordination, query(&req, "instances").as_deref()) {
                (Some(coordination), Some("all")) => match coordination.all_events().await {
                    Ok(events) => json(&events),
                    Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n")),
                },
                _ => json(&ctx.events.since(after)),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Mutating requests need the admin token when one is configured.
fn authorized(req: &Request<Incoming>, ctx: &Context) -> bool {
    let secrets = ctx.secrets.current();
    if !secrets.admin_required() {
        return true;
    }
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| secrets.admin_token_ok(given.as_bytes()))
}

/// One query parameter, percent-decoded (`+` is a space).
fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().and_then(|q| {
        q.split('&').find_map(|kv| {
            let value = kv.strip_prefix(name)?.strip_prefix('=')?;
            Some(percent_decode(value))
        })
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let hex = |b: u8| (b as char).to_digit(16);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `PUT /v1/policies/{router|quorum|detector}` (body: the `.wasm`, or no
/// body and `?builtin=<name>`; `?config=` the text for its `configure`,
/// `?shard=` which shard, default the first), `PUT
/// /v1/policies/router/shadow` (the same, as a shadow), `POST
/// /v1/policies/router/activate` and `.../rollback`.
async fn policy(req: Request<Incoming>, ctx: &Context, rest: String) -> Response<Full<Bytes>> {
    use crate::policy::swap::{Kind, Mode, Source};
    use http_body_util::BodyExt;
    let shard = query(&req, "shard").unwrap_or_else(|| ctx.topology.first().name.clone());
    let (kind_name, action) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
    let Some(kind) = Kind::parse(kind_name) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("no policy kind '{kind_name}' (expected router, quorum or detector)\n"),
        );
    };
    let method = req.method().clone();
    let result = match (method, action) {
        (Method::PUT, "" | "shadow") => {
            let mode = if action.is_empty() {
                Mode::Activate
            } else {
                Mode::Shadow
            };
            let config = query(&req, "config").unwrap_or_default();
            let builtin = query(&req, "builtin");
            let name = query(&req, "name");
            let body = http_body_util::Limited::new(req.into_body(), MAX_PLUGIN_BYTES);
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("cannot read the plugin: {e}\n"),
                    )
                }
            };
            let source = match (bytes.is_empty(), builtin) {
                (false, None) => Source::Upload {
                    bytes: bytes.to_vec(),
                    name,
                },
                (true, Some(name)) => Source::Builtin(name),
                _ => return text(
                    StatusCode::BAD_REQUEST,
                    "send either the plugin's .wasm as the body or ?builtin=<name> with no body\n",
                ),
            };
            match ctx.load_policy(kind, &shard, source, config, mode).await {
                Ok(view) => return json(&view),
                Err(e) => Err(e),
            }
        }
        (Method::POST, _) if kind != Kind::Router => {
            return text(
                StatusCode::NOT_FOUND,
                "only routers have a shadow and a previous generation; load the policy you want instead\n",
            )
        }
        (Method::POST, "activate") => ctx
            .activate_shadow(&shard)
            .await
            .map(|n| format!("generation {n}")),
        (Method::POST, "rollback") => ctx
            .rollback_router(&shard)
            .await
            .map(|n| format!("generation {n}")),
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    answer(result)
}

/// An operation's outcome as an HTTP answer: the status says what kind of
/// refusal it was, the body says why.
fn answer(result: Result<String, OpError>) -> Response<Full<Bytes>> {
    let (status, why) = match result {
        Ok(done) => return text(StatusCode::OK, &format!("{done}\n")),
        Err(e @ OpError::NotFound(_)) => (StatusCode::NOT_FOUND, e),
        Err(e @ OpError::TooSoon(_)) => (StatusCode::TOO_MANY_REQUESTS, e),
        Err(e @ OpError::Conflict(_)) => (StatusCode::CONFLICT, e),
        Err(e @ OpError::Rejected(_)) => (StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(e @ OpError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, e),
    };
    text(status, &format!("{why}\n"))
}

/// The live dashboard: one self-contained page that polls the GET
/// endpoints above, so it shows nothing an operator's scripts cannot see.
fn dashboard() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(include_bytes!(
        "dashboard.html"
    ))));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Its only script is inline and it only talks to this listener.
    headers.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    response
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

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("127.0.0.1%3A7001"), "127.0.0.1:7001");
        assert_eq!(super::percent_decode("a+b%2Cc"), "a b,c");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
    }
}
