//! The guardrails' part in a request: its policy (from the key, the alias and the gateway),
//! and the scan of its body, in [`super::serve`] or, for the Responses and Messages APIs,
//! in their handlers before they translate it ([`guard_body`]).

use bytes::Bytes;
use serde_json::Value;

use super::{Caller, Context, Refused};
use crate::guardrails::{self, Policy};
use crate::protocol::error::ApiError;
use crate::protocol::{self, ValidRequest};

/// The guardrails policy of a request: the caller's key, the alias it names, the gateway's
/// `[guardrails]` (most specific first); `None` when nothing is configured for it.
pub fn policy(ctx: &Context<'_>, caller: &Caller, alias: &str) -> Option<Policy> {
    let key = match caller {
        Caller::Key(k) => k.guardrails.as_ref(),
        Caller::Anonymous => None,
    };
    let alias = ctx.live.routes.get(alias).and_then(|a| a.guardrails.as_ref());
    let gateway = ctx.live.config.server.guardrails.as_ref();
    if key.is_none() && alias.is_none() && gateway.is_none() {
        return None;
    }
    Policy::resolve(&[key, alias, gateway])
}

/// Scans a validated request's text and redacts it in place: a redacted body is validated
/// again, so that the prompt every backend reads is the redacted one. A refusal comes back in
/// the verdict (recorded once the record is open).
pub(super) fn guard_request(policy: &Policy, req: &mut ValidRequest) -> Result<guardrails::Verdict, Refused> {
    let verdict = guardrails::scan_request(policy, &mut req.body);
    if verdict.redacted {
        let bytes = serde_json::to_vec(&req.body).map_err(|e| Refused::bare(ApiError::internal(e.to_string())))?;
        *req = protocol::validate(req.endpoint, &bytes).map_err(Refused::bare)?;
    }
    Ok(verdict)
}

/// The guardrails on a client's body before its handler translates it (the Responses and
/// Messages APIs), so that what the handler keeps (stored input items, a passed-through body)
/// is redacted too, and a refusal names the client's own fields. The body (redacted, when it
/// changed) and the verdict for [`Origin::guarded`]. Without guardrails configured anywhere
/// the body is not parsed here; one that is not a JSON object is left to the handler's own
/// validation.
pub fn guard_body(ctx: &Context<'_>, caller: &Caller, bytes: Bytes) -> (Bytes, Option<guardrails::Verdict>) {
    let configured = ctx.live.config.server.guardrails.is_some()
        || matches!(caller, Caller::Key(k) if k.guardrails.is_some())
        || ctx.live.config.aliases.iter().any(|a| a.guardrails.is_some());
    if !configured {
        return (bytes, None);
    }
    let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(&bytes) else { return (bytes, None) };
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
    let Some(p) = policy(ctx, caller, model) else { return (bytes, None) };
    let verdict = guardrails::scan_request(&p, &mut body);
    match verdict.redacted {
        true => (Bytes::from(serde_json::to_vec(&body).unwrap_or_default()), Some(verdict)),
        false => (bytes, Some(verdict)),
    }
}
