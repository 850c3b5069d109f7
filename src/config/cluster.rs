//! `[cluster]` (shared state on Redis) and `[ledger] postgres_url` (one ledger in
//! PostgreSQL), checked. A password is accepted only from the environment: either the whole
//! URL is `"${VAR}"`, or `redis_password` / `postgres_password` is.

#[allow(unused_imports)]
use super::*;

/// `[cluster]`, checked: what the replicas share through Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port/db` (or `rediss://`), with the password already in it when one is
    /// configured; never printed.
    pub redis_url: Secret,
    pub redis_password: Option<Secret>,
    /// How many replicas share the limits: while Redis is down each enforces `limit ÷ replicas`.
    pub replicas: u32,
    /// While Redis is down, a request beyond the replica's share is refused (429) instead of
    /// admitted.
    pub fail_closed: bool,
    /// How long one Redis call may take before the replica falls back to its own counters.
    pub timeout: Duration,
    /// The prefix of every key tollgate writes (several gateways may share one Redis).
    pub prefix: String,
}

/// `[ledger] postgres_url`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    pub url: Secret,
    pub password: Option<Secret>,
}

/// Refuses a literal URL that carries a password (`scheme://user:password@host`).
fn literal_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority.rsplit_once('@').is_some_and(|(user, _)| user.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

/// A URL that may come whole from the environment; a literal one may not hold a password.
fn url(value: &str, schemes: &[&str], file: &str, key: &str, env: Env<'_>, errs: &mut Vec<String>) -> Option<Secret> {
    let v = if env::env_ref(value).is_some() { secret(value, file, key, env, errs)? } else { Secret(value.to_owned()) };
    if !schemes.iter().any(|s| v.0.starts_with(&format!("{s}://"))) {
        let shown =
            if env::env_ref(value).is_some() { "the value of ".to_owned() + value } else { format!("'{value}'") };
        errs.push(format!("{file}: {key}: {shown} is not a {} URL", schemes.join("/")));
        return None;
    }
    if env::env_ref(value).is_none() && literal_password(value) {
        let pw_key = key.replace("_url", "_password");
        errs.push(format!(
            "{file}: {key}: a password is not allowed in a config file; write the URL without it and \
             set {pw_key} = \"${{TOLLGATE_PASSWORD}}\" (or put the whole URL in an environment variable)"
        ));
        return None;
    }
    Some(v)
}

pub(super) fn cluster_config(
    gw: &raw::GatewayFile,
    file: &str,
    env: Env<'_>,
    errs: &mut Vec<String>,
) -> (Option<ClusterConfig>, Option<PostgresConfig>) {
    let postgres = gw.ledger.postgres_url.as_deref().and_then(|u| {
        let url = url(u, &["postgres", "postgresql"], file, "ledger.postgres_url", env, errs)?;
        let password =
            gw.ledger.postgres_password.as_deref().and_then(|p| secret(p, file, "ledger.postgres_password", env, errs));
        Some(PostgresConfig { url, password })
    });
    if gw.ledger.postgres_password.is_some() && gw.ledger.postgres_url.is_none() {
        errs.push(format!("{file}: ledger.postgres_password: set ledger.postgres_url too"));
    }
    let Some(c) = &gw.cluster else { return (None, postgres) };
    let Some(u) = c.redis_url.as_deref() else {
        errs.push(format!("{file}: cluster.redis_url: name the Redis server (e.g. \"redis://127.0.0.1:6379/0\")"));
        return (None, postgres);
    };
    let redis_url = url(u, &["redis", "rediss"], file, "cluster.redis_url", env, errs);
    let redis_password = c.redis_password.as_deref().and_then(|p| secret(p, file, "cluster.redis_password", env, errs));
    let replicas = c.replicas.unwrap_or(1);
    if replicas == 0 {
        errs.push(format!("{file}: cluster.replicas: must be at least 1 (the replicas that share the limits)"));
    }
    let fail_closed = match c.fail_mode.as_deref() {
        None | Some("open") => false,
        Some("closed") => true,
        Some(o) => {
            errs.push(format!("{file}: cluster.fail_mode: '{o}' is not one of \"open\", \"closed\""));
            false
        }
    };
    let timeout = Duration::from_millis(c.timeout_ms.unwrap_or(250));
    if c.timeout_ms == Some(0) {
        errs.push(format!("{file}: cluster.timeout_ms: must be at least 1"));
    }
    let prefix = c.key_prefix.clone().unwrap_or_else(|| "tollgate".into());
    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
        errs.push(format!("{file}: cluster.key_prefix: '{prefix}' must be non-empty, without spaces or braces"));
    }
    if postgres.is_none() {
        errs.push(format!(
            "{file}: cluster: the replicas need one ledger: set ledger.postgres_url (e.g. \"postgres://tollgate@127.0.0.1:5432/tollgate\")"
        ));
    }
    if gw.batch.files_dir.is_none() {
        errs.push(format!(
            "{file}: cluster: uploaded files must be where every replica reads them: set batch.files_dir to a \
             directory every replica mounts"
        ));
    }
    let cluster = redis_url.map(|redis_url| ClusterConfig {
        redis_url,
        redis_password,
        replicas: replicas.max(1),
        fail_closed,
        timeout,
        prefix,
    });
    (cluster, postgres)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_password_is_found() {
        assert!(literal_password("redis://:secret@127.0.0.1:6379/0"));
        assert!(literal_password("postgres://tollgate:pass@db/tollgate"));
        assert!(!literal_password("postgres://tollgate@db/tollgate"));
        assert!(!literal_password("redis://127.0.0.1:6379/0"));
        assert!(!literal_password("redis://user:@h/0?x=a@b"));
    }
}
