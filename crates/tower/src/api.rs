//! The HTTP edge: authenticates each request, decodes its body, hands it to the domain
//! ([`crate::registration`], [`crate::governance`]) on a blocking thread, and turns a
//! [`Refusal`] into a 4xx naming the problem (5xx without detail for the tower's own failures).

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use vigil_policy::bitcoin::hex::FromHex;
use vigil_policy::bitcoin::key::XOnlyPublicKey;
use vigil_policy::bitcoin::secp256k1::schnorr;
use vigil_policy::bitcoin::OutPoint;

use crate::daemon::Tower;
use crate::error::Refusal;
use crate::wire::{self, ApiError, GET_VALIDITY_SECS};

/// Largest request body: a vault with 32-rung ladders fits many times over, and so does a
/// policy change (JSON-escaping can double the file's size).
pub const MAX_BODY: usize = 256 * 1024;
const _: () = assert!(2 * vigil_policy::MAX_POLICY_BYTES + 16 * 1024 <= MAX_BODY);

/// Largest enrollment: the first policy and every change the guardians signed since, each up
/// to [`vigil_policy::MAX_POLICY_BYTES`] (twice that JSON-escaped): some 36 changes of the
/// largest policies, a thousand of the usual size. At [`MAX_BODY`] a tower could not be added
/// to a client with a long whitelist after a few changes.
pub const MAX_ENROLL_BODY: usize = 4 * 1024 * 1024;

/// The API's routes.
pub fn router(tower: Arc<Tower>) -> Router {
    let enrollment = Router::new()
        .route("/v1/clients", post(enroll))
        .layer(DefaultBodyLimit::max(MAX_ENROLL_BODY))
        .layer(middleware::from_fn_with_state(MAX_ENROLL_BODY, refuse_oversize));
    Router::new()
        .route("/v1/vaults", post(register_vault))
        .route("/v1/vaults/{outpoint}", get(vault_state))
        .route("/v1/approvals", post(register_approval))
        .route("/v1/panic", post(panic))
        .route("/v1/policy", post(change_policy))
        .route("/v1/lockdown", post(lockdown))
        .route("/v1/lockdown/lift", post(lift_lockdown))
        .route("/v1/clients/{policy_id}", get(client_state))
        .route("/v1/clients/{policy_id}/alarms", get(client_alarms))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(MAX_BODY, refuse_oversize))
        .merge(enrollment)
        .fallback(no_such_request)
        .method_not_allowed_fallback(wrong_method)
        .with_state(tower)
}

/// The answer to a path no route serves, in the API's own shape (axum's is an empty 404).
/// Shared with the co-signer.
pub async fn no_such_request(request: Request) -> Response {
    let what = format!("no {} {} here", request.method(), request.uri().path());
    drain(request).await;
    Refusal::NotFound(what).into_response()
}

/// The answer to a method a route does not take, in the API's own shape. Shared with the
/// co-signer.
pub async fn wrong_method(request: Request) -> Response {
    let error = format!("{} {} is not a request here", request.method(), request.uri().path());
    drain(request).await;
    (StatusCode::METHOD_NOT_ALLOWED, Json(ApiError { error })).into_response()
}

/// A declared body up to this size is read and dropped before the 413 goes out (held in
/// memory while it is read: kept small).
const DRAIN_LIMIT: u64 = 1024 * 1024;
/// How long a sender of an oversize body gets to finish it.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Pending connections a listener holds before the kernel drops new ones (capped by
/// `net.core.somaxconn`). The default (1024) overflowed when a thousand clients connected
/// at once: their SYNs were answered with cookies, some of which then failed (a reset).
const BACKLOG: u32 = 4096;

/// Binds the API's listener, with room for a burst of new connections. Shared with the
/// co-signer.
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket =
        if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// Refuses a body whose declared length is over `max` with a 413 the client actually reads.
///
/// Answering as soon as the length is known and closing with the body unread makes the kernel
/// reset the connection, and the client sees a broken pipe instead of the refusal; so a body of
/// up to a MiB is read and dropped first. (A chunked body over the limit still meets
/// [`DefaultBodyLimit`].) Shared with the co-signer's API.
pub async fn refuse_oversize(State(max): State<usize>, request: Request, next: Next) -> Response {
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > max as u64 => {
            if length <= DRAIN_LIMIT {
                drain(request).await;
            }
            let error = format!("the body is {length} bytes; the limit is {max}");
            (StatusCode::PAYLOAD_TOO_LARGE, Json(ApiError { error })).into_response()
        }
        _ => next.run(request).await,
    }
}

/// Reads and drops up to [`DRAIN_LIMIT`] of `request`'s body (for [`DRAIN_TIME`] at most)
/// before an answer that does not need it: closed with the body unread, the connection is
/// reset and the client sees a broken pipe instead of the answer.
async fn drain(request: Request) {
    let body = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT as usize);
    let _ = tokio::time::timeout(DRAIN_TIME, body).await;
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(ApiError { error: self.message().to_owned() })).into_response()
    }
}

/// The signer of a request to this tower, after checking its signature over `signed`.
fn authenticate(
    tower: &Tower,
    headers: &HeaderMap,
    path: &str,
    signed: &[u8],
) -> Result<XOnlyPublicKey, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let unauthorized = |m: &str| Refusal::Unauthorized(m.to_owned());
    let key = header("x-vigil-key").ok_or_else(|| unauthorized("missing x-vigil-key header"))?;
    let sig = header("x-vigil-signature").ok_or_else(|| unauthorized("missing x-vigil-signature header"))?;
    let key =
        XOnlyPublicKey::from_str(key).map_err(|_| unauthorized("x-vigil-key is not an x-only public key"))?;
    let sig = <[u8; 64]>::from_hex(sig)
        .ok()
        .and_then(|b| schnorr::Signature::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("x-vigil-signature is not a 64-byte hex signature"))?;
    if !wire::verify_request(&key, &sig, &tower.public_key(), path, signed) {
        return Err(unauthorized(
            "the request signature does not verify (for this tower, this path and body)",
        ));
    }
    Ok(key)
}

/// A signed GET: it signs its `x-vigil-time`, which must be close to the tower's clock.
fn authenticate_get(tower: &Tower, headers: &HeaderMap, path: &str) -> Result<XOnlyPublicKey, Refusal> {
    let time = headers
        .get("x-vigil-time")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Refusal::Unauthorized("missing x-vigil-time header (unix seconds, signed)".into()))?;
    let t: u64 = time.parse().map_err(|_| Refusal::Unauthorized("x-vigil-time: not unix seconds".into()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if t.abs_diff(now) > GET_VALIDITY_SECS {
        return Err(Refusal::Unauthorized(format!(
            "x-vigil-time {t} is more than {GET_VALIDITY_SECS} s from the tower's clock ({now})"
        )));
    }
    authenticate(tower, headers, path, time.as_bytes())
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::BadRequest(format!("body: {e}")))
}

/// Runs a domain call off the async threads (it takes locks and may reach the store and the
/// chain backend). Once the tower failed (a write lost, a handler panicked), no answer is
/// given from what memory holds: it may be ahead of the store, and the tower is stopping.
async fn blocking<T: Send + 'static>(
    tower: Arc<Tower>,
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<Json<T>, Refusal> {
    if tower.failure().is_some() {
        return Err(stopping());
    }
    let answer = match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map(Json),
        Err(e) => {
            // It may have held the state lock: poisoned, nothing would be watched any more.
            tower.stop_failed(format!("a request handler panicked: {e}"));
            Err(Refusal::Internal)
        }
    };
    match tower.failure() {
        Some(_) => Err(stopping()),
        None => answer,
    }
}

fn stopping() -> Refusal {
    Refusal::Unavailable("the tower is stopping after a failure: retry later".into())
}

async fn register_vault(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/vaults", &body)?;
    let req: wire::RegisterVault = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::registration::register_vault(&tower, &signer, &req, &body))
        .await?
        .into_response())
}

async fn register_approval(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/approvals", &body)?;
    let req: wire::RegisterApproval = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::registration::register_approval(&tower, &signer, &req, &body))
        .await?
        .into_response())
}

async fn panic(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/panic", &body)?;
    let req: wire::PanicRequest = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::governance::panic(&tower, &signer, &req))
        .await?
        .into_response())
}

async fn enroll(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/clients", &body)?;
    let req: wire::EnrollClient = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::governance::enroll(&tower, &signer, &req))
        .await?
        .into_response())
}

async fn lockdown(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/lockdown", &body)?;
    let req: wire::LockdownRequest = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::governance::lockdown(&tower, &signer, &req))
        .await?
        .into_response())
}

async fn lift_lockdown(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/lockdown/lift", &body)?;
    let req: wire::LiftLockdown = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::governance::lift_lockdown(&tower, &signer, &req))
        .await?
        .into_response())
}

async fn change_policy(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let signer = authenticate(&tower, &headers, "/v1/policy", &body)?;
    let req: wire::ChangePolicy = decode(&body)?;
    Ok(blocking(tower.clone(), move || crate::governance::change_policy(&tower, &signer, &req))
        .await?
        .into_response())
}

async fn client_state(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let signer = authenticate_get(&tower, &headers, &format!("/v1/clients/{id}"))?;
    Ok(blocking(tower.clone(), move || crate::governance::client_view(&tower, &signer, &id))
        .await?
        .into_response())
}

async fn client_alarms(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let signer = authenticate_get(&tower, &headers, &format!("/v1/clients/{id}/alarms"))?;
    Ok(blocking(tower.clone(), move || crate::governance::alarm_feed(&tower, &signer, &id))
        .await?
        .into_response())
}

async fn vault_state(
    State(tower): State<Arc<Tower>>,
    headers: HeaderMap,
    Path(outpoint): Path<String>,
) -> Result<Response, Refusal> {
    let signer = authenticate_get(&tower, &headers, &format!("/v1/vaults/{outpoint}"))?;
    let outpoint = OutPoint::from_str(&outpoint)
        .map_err(|_| Refusal::BadRequest("expected /v1/vaults/<txid:vout>".into()))?;
    Ok(blocking(tower.clone(), move || crate::governance::vault_view(&tower, &signer, &outpoint))
        .await?
        .into_response())
}

async fn metrics(State(tower): State<Arc<Tower>>) -> Result<String, Refusal> {
    // The store may be PostgreSQL, whose client blocks: off the async threads.
    tokio::task::spawn_blocking(move || tower.metrics()).await.map_err(|_| Refusal::Internal)
}
