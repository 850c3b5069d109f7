//! `routes/`: aliases and their deployments (every kind's fields and the ones it must not
//! have), remote auth, registry models and their release references, checked.

use super::env::env_ref;
use super::server::amount;
#[allow(unused_imports)]
use super::*;

pub(super) fn alias_config(
    a: raw::AliasFile,
    i: usize,
    file: &Path,
    env: Env<'_>,
    errs: &mut Vec<String>,
) -> Option<AliasConfig> {
    let f = file.display().to_string();
    let at = format!("alias[{i}]");
    let before = errs.len();
    if a.name.is_empty() || a.name.contains(char::is_whitespace) {
        errs.push(format!("{f}: {at}.name: '{}' must be non-empty without spaces", a.name));
    }
    match (&a.router, a.deployment.is_empty()) {
        (None, true) => {
            errs.push(format!("{f}: {at}: alias '{}' has no [[alias.deployment]] (or [alias.router])", a.name))
        }
        (Some(_), false) => errs.push(format!("{f}: {at}: alias '{}' has a router and deployments; give one", a.name)),
        (Some(r), true) if r.small == r.large => {
            errs.push(format!("{f}: {at}.router: small and large are the same alias"))
        }
        _ => {}
    }
    let mut deployments = Vec::new();
    for (j, d) in a.deployment.into_iter().enumerate() {
        if let Some(d) = deployment_config(d, &format!("{at}.deployment[{j}]"), &f, file, env, errs) {
            deployments.push(d);
        }
    }
    let prefix_affine = match a.routing.as_deref() {
        None | Some("ordered") => false,
        Some("prefix_affine") => true,
        Some(o) => {
            errs.push(format!("{f}: {at}.routing: '{o}' is not one of \"ordered\", \"prefix_affine\""));
            false
        }
    };
    let load_factor = a.affinity_load_factor.unwrap_or(crate::policy::affinity::DEFAULT_LOAD_FACTOR);
    if load_factor < 1.0 {
        errs.push(format!("{f}: {at}.affinity_load_factor: must be at least 1.0"));
    }
    let router = a.router.map(|r| AutoRouterConfig {
        small: r.small,
        large: r.large,
        weights: r.weights.unwrap_or_default(),
        escalate_on_length: r.escalate_on_length.unwrap_or(false),
        classifier: r.classifier_prompt.map(|prompt| Classifier {
            prompt,
            timeout: Duration::from_millis(r.classifier_timeout_ms.unwrap_or(500).max(1)),
        }),
    });
    let guardrails =
        a.guardrails.as_ref().and_then(|g| super::server::guardrails_scope(g, &format!("{f}: {at}.guardrails"), errs));
    (errs.len() == before).then(|| AliasConfig {
        name: a.name,
        description: a.description,
        prefix_affine,
        load_factor,
        file: file.to_path_buf(),
        deployments,
        router,
        guardrails,
    })
}

pub(super) fn deployment_config(
    d: raw::DeploymentFile,
    at: &str,
    f: &str,
    file: &Path,
    env: Env<'_>,
    errs: &mut Vec<String>,
) -> Option<DeploymentConfig> {
    let before = errs.len();
    let mut out = DeploymentConfig { name: d.name.clone(), ..DeploymentConfig::defaults() };
    let ms = |v: Option<u64>, default: Duration| v.map(Duration::from_millis).unwrap_or(default);
    out.connect_timeout = ms(d.connect_timeout_ms, out.connect_timeout);
    out.first_token_timeout = ms(d.first_token_timeout_ms, out.first_token_timeout);
    out.stall_timeout = ms(d.stall_timeout_ms, out.stall_timeout);
    out.request_timeout = ms(d.request_timeout_ms, out.request_timeout);
    for (name, v) in [
        ("connect_timeout_ms", d.connect_timeout_ms),
        ("first_token_timeout_ms", d.first_token_timeout_ms),
        ("stall_timeout_ms", d.stall_timeout_ms),
        ("request_timeout_ms", d.request_timeout_ms),
    ] {
        if v == Some(0) {
            errs.push(format!("{f}: {at}.{name}: must be at least 1"));
        }
    }
    out.max_retries = d.max_retries.unwrap_or(out.max_retries);
    out.weight = d.weight.unwrap_or(1);
    out.embeddings = d.embeddings.unwrap_or(false);
    if let Some(p) = &d.price {
        let k = |n: &str| format!("{at}.price.{n}");
        let input = amount(&p.input, f, &k("input"), errs);
        let output = amount(&p.output, f, &k("output"), errs);
        let cached = p.cached_input.as_ref().and_then(|v| amount(v, f, &k("cached_input"), errs));
        let batch = p.batch_multiplier.as_ref().and_then(|v| amount(v, f, &k("batch_multiplier"), errs));
        if batch.is_some_and(|b| b > rust_decimal::Decimal::ONE) {
            errs.push(format!("{f}: {at}.price.batch_multiplier: must be at most 1 (a discount)"));
        }
        if let (Some(input), Some(output)) = (input, output) {
            out.price = Some(crate::pricing::Price {
                input,
                cached_input: cached.unwrap_or(input),
                output,
                batch_multiplier: batch.unwrap_or(rust_decimal::Decimal::ONE),
            });
        }
    }
    if let Some(c) = d.max_concurrency {
        if c == 0 {
            errs.push(format!("{f}: {at}.max_concurrency: must be at least 1"));
        }
        out.max_concurrency = c;
    }
    let local_only = [
        ("path", d.path.is_some()),
        ("context", d.context.is_some()),
        ("threads", d.threads.is_some()),
        ("parallel", d.parallel.is_some()),
        ("batch", d.batch.is_some()),
        ("ubatch", d.ubatch.is_some()),
        ("queue_depth", d.queue_depth.is_some()),
        ("chat_template", d.chat_template.is_some()),
        ("chat_template_file", d.chat_template_file.is_some()),
        ("gpu_layers", d.gpu_layers.is_some()),
        ("prefix_cache_tokens", d.prefix_cache_tokens.is_some()),
        ("prefix_cache_entries", d.prefix_cache_entries.is_some()),
        ("deterministic", d.deterministic.is_some()),
        ("session_ttl_secs", d.session_ttl_secs.is_some()),
        ("max_sessions", d.max_sessions.is_some()),
    ];
    let remote_only = [
        ("base_url", d.base_url.is_some()),
        ("model", d.model.is_some()),
        ("api_key", d.api_key.is_some()),
        ("max_tokens_field", d.max_tokens_field.is_some()),
        ("headers", !d.headers.is_empty()),
        ("responses", d.responses.is_some()),
        ("ca_file", d.ca_file.is_some()),
    ];
    let misplaced = |fields: &[(&str, bool)], kind: &str, errs: &mut Vec<String>| {
        for (name, set) in fields {
            if *set {
                errs.push(format!("{f}: {at}.{name}: not a setting of kind = \"{kind}\""));
            }
        }
    };
    let registry = d.kind == "registry";
    if registry {
        let (api_key, max_tokens_field, headers) = remote_auth(&d, at, f, env, errs);
        match d.model.as_deref().map(crate::registry::parse_ref) {
            Some(Ok((model, version))) => {
                out.release = Some(ReleaseRef { model, version, api_key, max_tokens_field, headers })
            }
            Some(Err(e)) => errs.push(format!("{f}: {at}.model: {e}")),
            None => errs.push(format!("{f}: {at}.model: required for kind = \"registry\" (NAME or NAME@X.Y.Z)")),
        }
        for (name, set) in remote_only.iter().chain(&local_only[..1]) {
            if *set && matches!(*name, "base_url" | "path" | "ca_file") {
                errs.push(format!("{f}: {at}.{name}: not a setting of kind = \"registry\" (the registry holds it)"));
            }
        }
        if d.responses.is_some() {
            errs.push(format!("{f}: {at}.responses: a registry version is served by translation; not a setting of kind = \"registry\""));
        }
    }
    match d.kind.as_str() {
        "openai" | "ollama" => {
            misplaced(&local_only, &d.kind, errs);
            let base_url = match &d.base_url {
                Some(u) => plain(u, f, &format!("{at}.base_url"), env, errs),
                None => {
                    errs.push(format!("{f}: {at}.base_url: required for kind = \"{}\"", d.kind));
                    None
                }
            };
            if let Some(u) = &base_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    errs.push(format!("{f}: {at}.base_url: '{u}' is not an http:// or https:// URL"));
                }
            }
            let model = d.model.clone().unwrap_or_else(|| {
                errs.push(format!("{f}: {at}.model: required (the upstream's model name)"));
                String::new()
            });
            let (api_key, max_tokens_field, headers) = remote_auth(&d, at, f, env, errs);
            let responses_passthrough = match (d.responses.as_deref(), d.kind.as_str()) {
                (None | Some("translate"), _) => false,
                (Some("passthrough"), "openai") => true,
                (Some("passthrough"), _) => {
                    errs.push(format!(
                        "{f}: {at}.responses: Ollama has no Responses API; only kind = \"openai\" can pass it through"
                    ));
                    false
                }
                (Some(other), _) => {
                    errs.push(format!("{f}: {at}.responses: '{other}' is not \"translate\" or \"passthrough\""));
                    false
                }
            };
            let ca_file = d.ca_file.as_deref().and_then(|p| plain(p, f, &format!("{at}.ca_file"), env, errs));
            let ca_file = ca_file.map(|p| beside(file, p));
            if let Some(p) = &ca_file {
                if let Err(e) = crate::config::read_certificates(p) {
                    errs.push(format!("{f}: {at}.ca_file: {e}"));
                }
            }
            let remote = RemoteConfig {
                base_url: base_url.unwrap_or_default().trim_end_matches('/').to_owned(),
                model,
                api_key,
                max_tokens_field,
                headers,
                responses_passthrough,
                ca_file,
            };
            out.kind = if d.kind == "openai" { DeploymentKind::OpenAi(remote) } else { DeploymentKind::Ollama(remote) };
        }
        "local" | "registry" => {
            if !registry {
                misplaced(&remote_only, "local", errs);
            }
            let path = match &d.path {
                None if registry => None,
                Some(p) => plain(p, f, &format!("{at}.path"), env, errs).map(|p| beside(file, p)),
                None => {
                    errs.push(format!("{f}: {at}.path: required for kind = \"local\" (the GGUF file)"));
                    None
                }
            };
            let mut l = LocalConfig::for_path(path.unwrap_or_default());
            l.context = d.context.unwrap_or(l.context);
            l.threads = d.threads;
            l.parallel = d.parallel.unwrap_or(l.parallel);
            l.batch = d.batch.unwrap_or(l.batch);
            l.ubatch = d.ubatch.unwrap_or(l.batch.min(l.ubatch));
            l.queue_depth = d.queue_depth.unwrap_or(4 * l.parallel as usize);
            l.chat_template = d.chat_template.clone();
            l.chat_template_file = d.chat_template_file.as_deref().map(|p| beside(file, p.to_owned()));
            if l.chat_template.is_some() && l.chat_template_file.is_some() {
                errs.push(format!("{f}: {at}: set chat_template (a built-in name) or chat_template_file, not both"));
            }
            l.gpu_layers = d.gpu_layers.unwrap_or(0);
            l.prefix_cache_tokens = d.prefix_cache_tokens.unwrap_or(l.context);
            l.prefix_cache_entries = d.prefix_cache_entries.unwrap_or(l.prefix_cache_entries);
            l.deterministic = d.deterministic.unwrap_or(l.deterministic);
            l.session_ttl = d.session_ttl_secs.map(Duration::from_secs).unwrap_or(l.session_ttl);
            l.max_sessions = d.max_sessions.unwrap_or(l.max_sessions);
            if l.parallel > 256 {
                errs.push(format!("{f}: {at}.parallel: must be at most 256 (llama.cpp's sequence limit)"));
            }
            for (name, v) in
                [("context", l.context), ("parallel", l.parallel), ("batch", l.batch), ("ubatch", l.ubatch)]
            {
                if v == 0 {
                    errs.push(format!("{f}: {at}.{name}: must be at least 1"));
                }
            }
            if l.batch < l.parallel {
                errs.push(format!(
                    "{f}: {at}.batch: {} is less than parallel ({}): every decoding sequence needs a place in each step's batch",
                    l.batch, l.parallel
                ));
            }
            if l.context < 64 {
                errs.push(format!("{f}: {at}.context: {} is too small (at least 64)", l.context));
            }
            out.batch_concurrency = (l.parallel as usize).saturating_sub(1).max(1);
            out.kind = DeploymentKind::Local(l);
        }
        other => errs
            .push(format!("{f}: {at}.kind: '{other}' is not one of \"openai\", \"ollama\", \"local\", \"registry\"")),
    }
    if let Some(b) = d.batch_concurrency {
        if b == 0 {
            errs.push(format!("{f}: {at}.batch_concurrency: must be at least 1"));
        }
        out.batch_concurrency = b.max(1);
    }
    (errs.len() == before).then_some(out)
}

/// A remote deployment's (or a registry deployment's remote versions') key, length field
/// name and extra headers.
pub(super) fn remote_auth(
    d: &raw::DeploymentFile,
    at: &str,
    f: &str,
    env: Env<'_>,
    errs: &mut Vec<String>,
) -> (Option<Secret>, String, Vec<(String, Secret)>) {
    let api_key = d.api_key.as_deref().and_then(|k| secret(k, f, &format!("{at}.api_key"), env, errs));
    let max_tokens_field = d.max_tokens_field.clone().unwrap_or_else(|| "max_tokens".into());
    if !matches!(max_tokens_field.as_str(), "max_tokens" | "max_completion_tokens") {
        errs.push(format!("{f}: {at}.max_tokens_field: must be \"max_tokens\" or \"max_completion_tokens\""));
    }
    let headers = d
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let v = match env_ref(v) {
                Some(_) => secret(v, f, &format!("{at}.headers.{k}"), env, errs)?,
                None => Secret(v.clone()),
            };
            Some((k.clone(), v))
        })
        .collect();
    (api_key, max_tokens_field, headers)
}

pub(super) fn model_config(m: raw::ModelFile, i: usize, file: &Path, errs: &mut Vec<String>) -> Option<ModelConfig> {
    let f = file.display().to_string();
    let at = format!("model[{i}]");
    let before = errs.len();
    if !crate::registry::valid_name(&m.name) {
        errs.push(format!("{f}: {at}.name: '{}' is not a registry model name", m.name));
    }
    for (k, v) in [("production", &m.production), ("staging", &m.staging)] {
        if let Some(v) = v.as_deref().filter(|v| !crate::registry::valid_version(v)) {
            errs.push(format!("{f}: {at}.{k}: '{v}' is not a version like 1.2.0"));
        }
    }
    let canary_weight = m.canary_weight.unwrap_or(if m.staging.is_some() { 10.0 } else { 0.0 });
    if !(0.0..=100.0).contains(&canary_weight) {
        errs.push(format!("{f}: {at}.canary_weight: {canary_weight} is not a percentage (0 to 100)"));
    }
    if m.staging.is_some() && m.staging == m.production {
        errs.push(format!("{f}: {at}: staging and production are the same version"));
    }
    let mut rollback = RollbackPolicy::default();
    if let Some(r) = m.rollback {
        rollback.enabled = r.enabled.unwrap_or(true);
        for (k, v, slot) in [
            ("error_rate_margin", r.error_rate_margin, &mut rollback.error_rate_margin),
            ("p95_margin", r.p95_margin, &mut rollback.p95_margin),
        ] {
            if let Some(v) = v {
                if !(v >= 0.0 && v.is_finite()) {
                    errs.push(format!("{f}: {at}.rollback.{k}: must be a non-negative fraction"));
                }
                *slot = v;
            }
        }
        rollback.min_requests = r.min_requests.unwrap_or(rollback.min_requests);
        if rollback.min_requests == 0 || rollback.min_requests > ROLLBACK_WINDOW as u64 {
            errs.push(format!(
                "{f}: {at}.rollback.min_requests: must be between 1 and {} (the comparison's window)",
                ROLLBACK_WINDOW
            ));
        }
    }
    (errs.len() == before).then(|| ModelConfig {
        name: m.name,
        production: m.production,
        staging: m.staging,
        canary_weight,
        rollback,
        file: file.to_path_buf(),
    })
}

/// Registry references: pinned versions exist; a followed model is declared once in `[[model]]`.
pub(super) fn check_releases(aliases: &[AliasConfig], models: &[ModelConfig], registry: &Path, errs: &mut Vec<String>) {
    let reg = crate::registry::Registry::new(registry.to_path_buf());
    let mut seen = HashSet::new();
    for m in models {
        if !seen.insert(m.name.clone()) {
            errs.push(format!("{}: model '{}' is declared more than once", m.file.display(), m.name));
        }
        for v in [&m.production, &m.staging].into_iter().flatten() {
            if let Err(e) = reg.get(&m.name, v) {
                errs.push(format!("{}: model '{}': {e}", m.file.display(), m.name));
            }
        }
    }
    for a in aliases {
        let followed = a.deployments.iter().filter(|d| d.release.as_ref().is_some_and(|r| r.version.is_none()));
        if followed.count() > 1 {
            errs.push(format!(
                "{}: alias '{}': more than one deployment follows a registry model's stages; pin the others \
                 (model = \"NAME@X.Y.Z\") or give each its own alias",
                a.file.display(),
                a.name
            ));
        }
        for d in &a.deployments {
            let Some(r) = &d.release else { continue };
            if let Some(v) = &r.version {
                if let Err(e) = reg.get(&r.model, v) {
                    errs.push(format!("{}: alias '{}': deployment '{}': {e}", a.file.display(), a.name, d.name));
                }
            }
        }
    }
}

/// A path from a `routes/` file: relative ones are relative to the directory above `routes/`.
fn beside(file: &Path, p: impl Into<PathBuf>) -> PathBuf {
    let p = p.into();
    if p.is_relative() {
        file.parent().and_then(Path::parent).unwrap_or(Path::new(".")).join(p)
    } else {
        p
    }
}
