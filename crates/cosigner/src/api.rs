//! The HTTP edge: reads the credentials, hands the request to the domain on a blocking thread
//! (decisions take their client's lock and may reach the chain and the towers), and turns a
//! [`Refusal`] into a 4xx naming the problem.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::error::Refusal;
use crate::service::{decode, Caller, Cosigner, Credentials};
use crate::wire::Signed;

/// Largest request body: a spend PSBT or a ceremony's signatures fit many times over.
pub const MAX_BODY: usize = 128 * 1024;
// A policy, pinned or changed, fits JSON-escaped (which can double it) with its signatures.
const _: () = assert!(2 * vigil_policy::MAX_POLICY_BYTES + 16 * 1024 <= MAX_BODY);
/// Largest body of the two requests that carry a transaction of many coins, each with its
/// metadata and signatures: a vault's funding from many intake coins, and the deep vault's
/// fast path bringing back every vault a panic swept (a few kB a coin: at `MAX_BODY` a
/// household of some 30 vaults could not use it).
pub const MAX_MANY_COINS_BODY: usize = 4 * 1024 * 1024;

/// The operator's routes (`metrics_listen`): `/metrics` alone.
pub fn metrics_router(cosigner: Arc<Cosigner>) -> Router {
    Router::new().route("/metrics", get(metrics)).with_state(cosigner)
}

/// The API's routes.
pub fn router(cosigner: Arc<Cosigner>) -> Router {
    let many_coins = Router::new()
        .route("/v1/vaults/complete", post(complete_vault))
        .route("/v1/deep-vault/sign", post(deep_vault_sign))
        .layer(DefaultBodyLimit::max(MAX_MANY_COINS_BODY))
        .layer(axum::middleware::from_fn_with_state(MAX_MANY_COINS_BODY, vigil_tower::api::refuse_oversize));
    Router::new()
        .route("/v1/enroll", post(enroll))
        .route("/v1/clients", post(pin))
        .route("/v1/vaults", post(begin_vault))
        .route("/v1/vaults/{outpoint}", get(vault_status))
        .route("/v1/spends", post(request_spend).get(spends))
        .route("/v1/spends/{id}", get(spend_status))
        .route("/v1/spends/{id}/vote", post(vote))
        .route("/v1/spends/{id}/sign", post(sign_spend))
        .route("/v1/lockdown", post(lockdown).get(lockdown_state))
        .route("/v1/lockdown/lift", post(lift))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/panic", post(panic))
        .route("/v1/restore/policy", post(fetch_policy))
        .route("/v1/restore/confirm", post(confirm_restore))
        .route("/v1/restore", get(restore_state).post(restore))
        .route("/v1/alarms", get(alarm_feed))
        .route("/v1/policy", post(change_policy))
        .route("/v1/policy/changes", get(policy_changes))
        .route("/v1/towers", post(enroll_tower))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(MAX_BODY, vigil_tower::api::refuse_oversize))
        .merge(many_coins)
        .fallback(vigil_tower::api::no_such_request)
        .method_not_allowed_fallback(vigil_tower::api::wrong_method)
        .with_state(cosigner)
}

fn credentials(headers: &HeaderMap) -> Credentials {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    Credentials {
        client: h("x-vigil-client"),
        key: h("x-vigil-key"),
        signature: h("x-vigil-signature"),
        time: h("x-vigil-time"),
    }
}

/// Runs a domain call off the async threads.
async fn blocking<T: Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(refusal)) => refusal.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "request handler panicked");
            Refusal::Internal.into_response()
        }
    }
}

/// A signed POST of a pinned client: authenticate, decode, act.
async fn signed<T, R>(
    cosigner: Arc<Cosigner>,
    headers: HeaderMap,
    path: String,
    body: Bytes,
    act: impl FnOnce(&Arc<Cosigner>, &Caller, &Signed<T>) -> Result<R, Refusal> + Send + 'static,
) -> Response
where
    T: serde::de::DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    let creds = credentials(&headers);
    blocking(move || {
        let caller = cosigner.authenticate(&creds, &path, &body)?;
        let req: Signed<T> = decode(&body)?;
        act(&cosigner, &caller, &req)
    })
    .await
}

async fn enroll(State(c): State<Arc<Cosigner>>, body: Bytes) -> Response {
    blocking(move || c.enroll(&decode(&body)?)).await
}

async fn pin(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    let creds = credentials(&headers);
    blocking(move || c.pin(&creds, &body)).await
}

async fn begin_vault(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/vaults".into(), body, |c, caller, req| c.begin_vault(caller, req)).await
}

async fn complete_vault(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/vaults/complete".into(), body, |c, caller, req| c.complete_vault(caller, req))
        .await
}

/// A signed GET of a pinned client: authenticate, act.
async fn signed_get<R: Serialize + Send + 'static>(
    cosigner: Arc<Cosigner>,
    headers: HeaderMap,
    path: String,
    act: impl FnOnce(&Cosigner, &Caller) -> Result<R, Refusal> + Send + 'static,
) -> Response {
    let creds = credentials(&headers);
    blocking(move || act(&cosigner, &cosigner.authenticate_get(&creds, &path)?)).await
}

async fn vault_status(
    State(c): State<Arc<Cosigner>>,
    headers: HeaderMap,
    Path(outpoint): Path<String>,
) -> Response {
    let path = format!("/v1/vaults/{outpoint}");
    signed_get(c, headers, path, move |c, caller| c.vault_status(caller, &outpoint)).await
}

async fn restore(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/restore".into(), body, |c, caller, req| c.restore(caller, req)).await
}

async fn confirm_restore(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/restore/confirm".into(), body, |c, caller, req| c.confirm_restore(caller, req))
        .await
}

async fn restore_state(State(c): State<Arc<Cosigner>>, headers: HeaderMap) -> Response {
    signed_get(c, headers, "/v1/restore".into(), |c, caller| c.restore_state(caller)).await
}

async fn policy_changes(State(c): State<Arc<Cosigner>>, headers: HeaderMap) -> Response {
    signed_get(c, headers, "/v1/policy/changes".into(), |c, caller| c.policy_changes(caller)).await
}

async fn alarm_feed(State(c): State<Arc<Cosigner>>, headers: HeaderMap) -> Response {
    signed_get(c, headers, "/v1/alarms".into(), |c, caller| c.alarm_feed(caller)).await
}

async fn fetch_policy(State(c): State<Arc<Cosigner>>, body: Bytes) -> Response {
    blocking(move || c.fetch_policy(&decode(&body)?)).await
}

async fn deep_vault_sign(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/deep-vault/sign".into(), body, |c, caller, req| c.deep_vault_sign(caller, req))
        .await
}

async fn request_spend(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/spends".into(), body, |c, caller, req| c.request_spend(caller, req)).await
}

async fn spends(State(c): State<Arc<Cosigner>>, headers: HeaderMap) -> Response {
    signed_get(c, headers, "/v1/spends".into(), |c, caller| c.spends(caller)).await
}

/// The request id in `/v1/spends/{id}/...`: a number, or a 400 in the API's own shape (axum's
/// own refusal is plain text).
struct SpendId(u64);

impl<S: Send + Sync> FromRequestParts<S> for SpendId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(text) =
            Path::<String>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        text.parse().map(SpendId).map_err(|_| {
            Refusal::BadRequest(format!("{text:?} is not a request id: expected /v1/spends/<number>"))
                .into_response()
        })
    }
}

async fn spend_status(State(c): State<Arc<Cosigner>>, headers: HeaderMap, SpendId(id): SpendId) -> Response {
    signed_get(c, headers, format!("/v1/spends/{id}"), move |c, caller| c.spend_status(caller, id)).await
}

async fn vote(
    State(c): State<Arc<Cosigner>>,
    headers: HeaderMap,
    SpendId(id): SpendId,
    body: Bytes,
) -> Response {
    signed(c, headers, format!("/v1/spends/{id}/vote"), body, move |c, caller, req| c.vote(caller, id, req))
        .await
}

async fn sign_spend(
    State(c): State<Arc<Cosigner>>,
    headers: HeaderMap,
    SpendId(id): SpendId,
    body: Bytes,
) -> Response {
    signed(c, headers, format!("/v1/spends/{id}/sign"), body, move |c, caller, req| {
        c.sign_spend(caller, id, req)
    })
    .await
}

async fn lockdown(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/lockdown".into(), body, |c, caller, req| c.lockdown(caller, req)).await
}

async fn lockdown_state(State(c): State<Arc<Cosigner>>, headers: HeaderMap) -> Response {
    signed_get(c, headers, "/v1/lockdown".into(), |c, caller| c.lockdown_state(caller)).await
}

async fn lift(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/lockdown/lift".into(), body, |c, caller, req| c.lift(caller, req)).await
}

async fn heartbeat(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/heartbeat".into(), body, |c, caller, req| c.heartbeat(caller, req)).await
}

async fn panic(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/panic".into(), body, |c, caller, req| c.panic(caller, req)).await
}

async fn change_policy(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/policy".into(), body, |c, caller, req| c.change_policy(caller, req)).await
}

async fn enroll_tower(State(c): State<Arc<Cosigner>>, headers: HeaderMap, body: Bytes) -> Response {
    signed(c, headers, "/v1/towers".into(), body, |c, caller, req| c.enroll_tower(caller, req)).await
}

async fn metrics(State(c): State<Arc<Cosigner>>) -> Response {
    match tokio::task::spawn_blocking(move || c.metrics()).await {
        Ok(Ok(text)) => text.into_response(),
        Ok(Err(r)) => r.into_response(),
        Err(_) => Refusal::Internal.into_response(),
    }
}
