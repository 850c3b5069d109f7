//! The `[server]` and `[auth]` sections of the gateway file, checked.

#[allow(unused_imports)]
use super::*;

pub(super) fn server_config(
    gw: &raw::GatewayFile,
    base: &Path,
    file: &str,
    opts: &LoadOptions,
    errs: &mut Vec<String>,
) -> ServerConfig {
    let mut s = ServerConfig::default();
    if let Some(l) = &gw.listen {
        match l.parse() {
            Ok(a) => s.listen = a,
            Err(_) => errs.push(format!("{file}: listen: '{l}' is not an address like 127.0.0.1:8080")),
        }
    }
    if let Some(l) = opts.listen {
        s.listen = l;
    }
    // Relative to the gateway file, like every path in it (the working directory without one).
    s.data_dir = base.join(gw.data_dir.as_deref().unwrap_or("data"));
    s.registry_dir = match &gw.registry.dir {
        Some(d) => base.join(d),
        None => s.data_dir.join("registry"),
    };
    if let Some(b) = gw.max_body_bytes {
        if b < 1024 {
            errs.push(format!("{file}: max_body_bytes: {b} is too small (at least 1024)"));
        }
        s.max_body_bytes = b;
    }
    if let Some(g) = gw.shutdown_grace_secs {
        s.shutdown_grace = Duration::from_secs(g);
    }
    if let Some(k) = gw.keepalive_secs {
        if k == 0 {
            errs.push(format!("{file}: keepalive_secs: must be at least 1"));
        }
        s.keepalive = Duration::from_secs(k.max(1));
    }
    if let Some(t) = gw.header_read_timeout_ms {
        if t < 10 {
            errs.push(format!("{file}: header_read_timeout_ms: {t} is too short (at least 10)"));
        }
        s.header_read_timeout = Duration::from_millis(t.max(10));
    }
    if let Some(m) = gw.max_connections {
        if m == 0 {
            errs.push(format!("{file}: max_connections: must be at least 1"));
        }
        s.max_connections = Some(m.max(1));
    }
    if let Some(o) = &gw.otel {
        match o.endpoint.as_deref() {
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => {
                s.otel = Some(OtelConfig {
                    endpoint: e.to_owned(),
                    service_name: o.service_name.clone().unwrap_or_else(|| "tollgate".into()),
                    batch_delay: Duration::from_millis(o.batch_delay_ms.unwrap_or(1000).max(1)),
                })
            }
            Some(e) => errs.push(format!("{file}: otel.endpoint: '{e}' is not an http:// or https:// URL")),
            None => errs.push(format!(
                "{file}: otel.endpoint: name the collector's OTLP/HTTP URL (e.g. \"http://127.0.0.1:4318\")"
            )),
        }
    }
    if let Some(g) = &gw.guardrails {
        s.guardrails = guardrails_scope(g, &format!("{file}: guardrails"), errs);
    }
    match gw.log.format.as_deref() {
        None | Some("text") => {}
        Some("json") => s.log_json = true,
        Some(o) => errs.push(format!("{file}: log.format: '{o}' is not one of \"text\", \"json\"")),
    }
    s.log_content = gw.log.content.unwrap_or(false);
    s.cors_origins = gw.cors.allow_origins.clone();
    let c = &gw.cache;
    s.cache.enabled = c.enabled.unwrap_or(false);
    if let Some(t) = c.ttl_secs {
        if t == 0 {
            errs.push(format!("{file}: cache.ttl_secs: must be at least 1"));
        }
        s.cache.ttl = Duration::from_secs(t.max(1));
    }
    if let Some(m) = c.max_entries {
        s.cache.max_entries = m;
    }
    if let Some(b) = c.max_entry_bytes {
        s.cache.max_entry_bytes = b;
    }
    match c.scope.as_deref() {
        None | Some("key") => {}
        Some("global") => s.cache.global = true,
        Some(o) => errs.push(format!("{file}: cache.scope: '{o}' is not one of \"key\", \"global\"")),
    }
    s.ledger = gw.ledger.enabled.unwrap_or(true);
    if let Some(t) = gw.responses.ttl_secs {
        if t == 0 {
            errs.push(format!("{file}: responses.ttl_secs: must be at least 1"));
        }
        s.responses_ttl = Duration::from_secs(t.max(1));
    }
    if let Some(c) = gw.batch.concurrency {
        if c == 0 {
            errs.push(format!("{file}: batch.concurrency: must be at least 1"));
        }
        s.batch_concurrency = c.max(1);
    }
    if let Some(d) = &gw.batch.files_dir {
        s.files_dir = Some(base.join(d));
    }
    if let Some(l) = gw.batch.lease_ms {
        if l < 100 {
            errs.push(format!("{file}: batch.lease_ms: {l} is too short (at least 100)"));
        }
        s.batch_lease = Duration::from_millis(l.max(100));
    }
    if let Some(m) = gw.limits.default_max_tokens {
        s.default_max_tokens = m;
    }
    let m = &gw.monitor;
    let mc = &mut s.monitor;
    mc.enabled = m.enabled.unwrap_or(mc.enabled);
    if let Some(w) = m.window_secs {
        if w < 10 {
            errs.push(format!("{file}: monitor.window_secs: must be at least 10"));
        }
        mc.window = Duration::from_secs(w.max(10));
    }
    for (name, v) in [("error_rate_threshold", m.error_rate_threshold), ("drift_threshold", m.drift_threshold)] {
        if v.is_some_and(|v| !(v > 0.0 && v.is_finite())) {
            errs.push(format!("{file}: monitor.{name}: must be a positive number"));
        }
    }
    mc.error_rate_threshold = m.error_rate_threshold.unwrap_or(mc.error_rate_threshold);
    mc.drift_threshold = m.drift_threshold.unwrap_or(mc.drift_threshold);
    mc.min_requests = m.min_requests.unwrap_or(mc.min_requests).max(1);
    if let Some(w) = m.drift_window {
        if w < 10 {
            errs.push(format!("{file}: monitor.drift_window: must be at least 10 requests"));
        }
        mc.drift_window = w.max(10);
    }
    if let Some(u) = &m.webhook_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            errs.push(format!("{file}: monitor.webhook_url: '{u}' is not an http:// or https:// URL"));
        }
        mc.webhook_url = Some(u.clone());
    }
    s
}

/// A positive decimal amount (a price or a budget) from a number or a decimal string.
pub(super) fn amount(v: &toml::Value, file: &str, key: &str, errs: &mut Vec<String>) -> Option<rust_decimal::Decimal> {
    match crate::pricing::decimal_from_toml(v) {
        Some(d) if d >= rust_decimal::Decimal::ZERO => Some(d),
        _ => {
            errs.push(format!("{file}: {key}: {v} is not a non-negative amount (a number or a decimal string)"));
            None
        }
    }
}

/// `30s`, `30m`, `24h`, `7d`, or plain seconds.
pub fn duration_secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().ok()?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(per)
}

pub(super) fn auth_config(a: &raw::AuthFile, file: &str, env: Env<'_>, errs: &mut Vec<String>) -> AuthConfig {
    let mut out = AuthConfig { open: a.open.unwrap_or(false), ..Default::default() };
    match (&a.admin_key, &a.admin_key_sha256) {
        (Some(_), Some(_)) => errs.push(format!("{file}: auth: give admin_key or admin_key_sha256, not both")),
        (Some(k), None) => {
            out.admin_key_sha256 = secret(k, file, "auth.admin_key", env, errs).map(|s| sha256(s.0.as_bytes()))
        }
        (None, Some(h)) => match parse_sha256(h) {
            Some(h) => out.admin_key_sha256 = Some(h),
            None => errs.push(format!("{file}: auth.admin_key_sha256: not 64 hex digits")),
        },
        (None, None) => {}
    }
    let mut names = HashSet::new();
    for (i, k) in a.keys.iter().enumerate() {
        let key = format!("auth.keys[{i}]");
        if !names.insert(k.name.clone()) {
            errs.push(format!("{file}: {key}.name: '{}' is used twice", k.name));
        }
        let hash = match (&k.sha256, &k.key) {
            (Some(h), None) => parse_sha256(h).or_else(|| {
                errs.push(format!("{file}: {key}.sha256: not 64 hex digits"));
                None
            }),
            (None, Some(v)) => secret(v, file, &format!("{key}.key"), env, errs).map(|s| sha256(s.0.as_bytes())),
            _ => {
                errs.push(format!("{file}: {key}: give exactly one of sha256 or key"));
                None
            }
        };
        if k.aliases.is_empty() {
            errs.push(format!("{file}: {key}.aliases: list the aliases this key may call (\"*\" for all)"));
        }
        for (name, v) in [
            ("requests_per_minute", k.requests_per_minute.map(u64::from)),
            ("tokens_per_minute", k.tokens_per_minute),
            ("max_concurrent", k.max_concurrent.map(u64::from)),
        ] {
            if v == Some(0) {
                errs.push(format!("{file}: {key}.{name}: must be at least 1 (leave it out for no limit)"));
            }
        }
        let limits = KeyLimits {
            requests_per_minute: k.requests_per_minute,
            tokens_per_minute: k.tokens_per_minute,
            max_concurrent: k.max_concurrent,
            budget_usd_per_day: k
                .budget_usd_per_day
                .as_ref()
                .and_then(|v| amount(v, file, &format!("{key}.budget_usd_per_day"), errs)),
            budget_usd_per_month: k
                .budget_usd_per_month
                .as_ref()
                .and_then(|v| amount(v, file, &format!("{key}.budget_usd_per_month"), errs)),
        };
        if let Some(sha256) = hash {
            let guardrails =
                k.guardrails.as_ref().and_then(|g| guardrails_scope(g, &format!("{file}: {key}.guardrails"), errs));
            out.keys.push(ApiKeyConfig {
                name: k.name.clone(),
                sha256,
                aliases: k.aliases.clone(),
                limits,
                guardrails,
            });
        }
    }
    out
}

/// A `guardrails` table, checked (`at` names it in errors).
pub(super) fn guardrails_scope(
    g: &raw::GuardrailsFile,
    at: &str,
    errs: &mut Vec<String>,
) -> Option<crate::guardrails::Scope> {
    crate::guardrails::Scope::parse(g.default.as_deref(), &g.detectors, at).map_err(|e| errs.push(e)).ok()
}
