//! The small-model router's step: an `auto` alias sends a request to its small or its large
//! alias. The rules ([`crate::policy::smallroute`]) decide, unless the alias has a
//! classifier: then the small alias is asked EASY or HARD first, under a timeout, and the
//! rules decide only when it times out, fails or answers neither word.
//!
//! The decision is recorded (`route`, sent as `x-tollgate-route`), and a request sent to the
//! small alias carries the large one's price (to account the saving) and, when the small
//! one fails or is cut at `max_tokens`, an [`Escalation`] to the large alias.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use super::{Caller, Context, Refused};
use crate::accounting::{RequestRecord, Tap};
use crate::backend::{BackendRequest, Priority};
use crate::clock::ms;
use crate::config::Classifier;
use crate::policy::smallroute;
use crate::protocol::error::ApiError;
use crate::protocol::{self, Endpoint, Prompt, ValidRequest};
use crate::router::{self, Alias, Committed};

/// Where a request sent to the small alias goes next if the small answer will not do.
pub struct Escalation {
    pub large: Arc<Alias>,
    /// Also when the small answer was cut at `max_tokens` (not only when it failed).
    pub on_length: bool,
}

/// Why the classifier did not decide (the rules did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoVerdict {
    /// No answer within `classifier_timeout_ms`.
    Timeout,
    /// The call could not be made or failed.
    Error,
    /// An answer that is neither EASY nor HARD.
    Unclear,
}

impl fmt::Display for NoVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoVerdict::Timeout => "timeout",
            NoVerdict::Error => "error",
            NoVerdict::Unclear => "unclear",
        })
    }
}

/// The alias that serves the request: `alias` itself, or the small or large alias its
/// router chose (with the escalation, if it chose the small one).
pub async fn choose(
    ctx: &Context<'_>,
    alias: Arc<Alias>,
    req: &ValidRequest,
    caller: &Caller,
    rid: &str,
    rec: &mut RequestRecord,
) -> Result<(Arc<Alias>, Option<Escalation>), Refused> {
    let Some(auto) = &alias.auto else {
        return Ok((alias, None));
    };
    let mut decision = smallroute::decide(&smallroute::features(&req.body), &auto.weights);
    let mut asked = String::new();
    if let Some(cl) = &auto.classifier {
        match classify(ctx, &auto.small, cl, req, caller, rid).await {
            Ok(large) => {
                decision.large = large;
                asked = format!("; classifier={}", if large { "hard" } else { "easy" });
            }
            Err(why) => asked = format!("; classifier={why}, rules decided"),
        }
    }
    let target = if decision.large { &auto.large } else { &auto.small };
    let Some(chosen) = ctx.live.routes.get(target).cloned() else {
        let e =
            ApiError::unavailable(format!("The router '{}' points at '{target}', which is not loaded.", alias.name));
        return Err(Refused::with(e, rec.clone()));
    };
    rec.route = Some(format!("{}{asked}; model={target}", decision.header()));
    let mut escalation = None;
    if !decision.large {
        let large = ctx.live.routes.get(&auto.large).cloned();
        rec.downgrade_price = large.as_ref().and_then(|l| l.deployments.first()).and_then(|d| d.cfg.price.clone());
        escalation = large.map(|large| Escalation { large, on_length: auto.escalate_on_length });
    }
    Ok((chosen, escalation))
}

/// The router's classifier: the named prompt and the request's last user message, asked of
/// the small alias for one word under the timeout. `Ok(true)`: HARD. The call is accounted as
/// its own record (`route = "classifier"`).
async fn classify(
    ctx: &Context<'_>,
    small: &str,
    cl: &Classifier,
    req: &ValidRequest,
    caller: &Caller,
    rid: &str,
) -> Result<bool, NoVerdict> {
    let start = Instant::now();
    let alias = ctx.live.routes.get(small).ok_or(NoVerdict::Error)?;
    let system = ctx.live.prompts.get(&cl.prompt).ok_or(NoVerdict::Error)?;
    let text = match &req.prompt {
        Prompt::Chat(m) => m.iter().rev().find(|m| m.role == "user").map(|m| m.content.as_str()).unwrap_or(""),
        Prompt::Text(t) => t.as_str(),
        Prompt::Embed(_) => return Err(NoVerdict::Error),
    };
    // The end of a long request says most about what is asked.
    let cut = text.len().saturating_sub(4000);
    let text = &text[(cut..=text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(0)..];
    let body = serde_json::json!({"model": small, "max_tokens": 3, "temperature": 0.0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]});
    let bytes = serde_json::to_vec(&body).map_err(|_| NoVerdict::Error)?;
    let creq = protocol::validate(Endpoint::Chat, &bytes).map_err(|_| NoVerdict::Error)?;
    let mut rec = RequestRecord::new(format!("{rid}-classifier"), Endpoint::Chat, small.to_owned(), false);
    rec.key = caller.name().map(str::to_owned);
    rec.route = Some("classifier".into());
    let br = BackendRequest {
        req: Arc::new(creq),
        request_id: format!("{rid}-classifier"),
        traceparent: None,
        priority: Priority::Interactive,
        fingerprint: 0,
        session: None,
        seed: 0,
        native: None,
    };
    let outcome = tokio::time::timeout(cl.timeout, router::dispatch(alias, alias.order_for(0, false), &br)).await;
    let answer = match outcome {
        Err(_) => {
            rec.status = 504;
            rec.error = Some("classifier_timeout");
            Err(NoVerdict::Timeout)
        }
        Ok(Err(f)) => {
            rec.status = f.error.status.as_u16();
            rec.error = Some(f.error.kind());
            rec.deployment = f.deployment;
            Err(NoVerdict::Error)
        }
        Ok(Ok(d)) => {
            rec.deployment = Some(d.deployment.name().to_owned());
            rec.backend_kind = Some(d.deployment.cfg.kind.name());
            rec.price = d.deployment.cfg.price.clone();
            let said = match &d.reply {
                Committed::Full { body, usage, .. } => {
                    super::tap_body(Tap::new(start, None), body, *usage, &mut rec);
                    body.get("choices")
                        .and_then(|c| c.get(0))
                        .and_then(|c| c["message"]["content"].as_str())
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                }
                Committed::Stream { .. } => {
                    Tap::new(start, None).finish_into(&mut rec);
                    String::new()
                }
            };
            if said.starts_with("hard") {
                Ok(true)
            } else if said.starts_with("easy") {
                Ok(false)
            } else {
                Err(NoVerdict::Unclear)
            }
        }
    };
    rec.total_ms = ms(start.elapsed());
    ctx.accounting.finish(rec);
    answer
}
