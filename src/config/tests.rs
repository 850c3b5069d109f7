use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn load_dir(dir: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let opts = LoadOptions { config: Some(dir.join("tollgate.toml")), ..Default::default() };
    load_with_env(&opts, &move |k| env.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone()))
}

#[test]
fn every_problem_is_listed_with_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "tollgate.toml", "listen = \"nope\"\n[auth]\nadmin_key = \"literal-secret\"\n");
    write(
        d.path(),
        "routes/a.toml",
        r#"
[[alias]]
name = "chat"
[[alias.deployment]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
model = "m"
api_key = "sk-literal"
"#,
    );
    write(d.path(), "routes/b.toml", "[[alias]]\nname = \"x\"\nbogus = 1\n");
    let errs = load_dir(d.path(), &[]).unwrap_err().0;
    let all = errs.join("\n");
    assert!(all.contains("tollgate.toml: listen"), "{all}");
    assert!(all.contains("auth.admin_key: a literal secret"), "{all}");
    assert!(all.contains("a.toml: alias[0].deployment[0].api_key: a literal secret"), "{all}");
    assert!(all.contains("b.toml") && all.contains("alias[0].bogus") || all.contains("unknown field `bogus`"), "{all}");
    assert!(errs.len() >= 4, "{all}");
}

#[test]
fn secrets_come_from_the_environment() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "tollgate.toml",
        "[auth]\nadmin_key = \"${ADMIN}\"\n[[auth.keys]]\nname = \"dev\"\nkey = \"${DEV}\"\naliases = [\"*\"]\n",
    );
    write(
        d.path(),
        "routes/a.toml",
        "[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"up\"\nkind = \"ollama\"\nbase_url = \"http://127.0.0.1:11434/\"\nmodel = \"gemma3\"\n",
    );
    let c = load_dir(d.path(), &[("ADMIN", "a"), ("DEV", "d")]).unwrap();
    assert_eq!(c.auth.keys[0].sha256, sha256(b"d"));
    assert_eq!(c.auth.admin_key_sha256, Some(sha256(b"a")));
    match &c.aliases[0].deployments[0].kind {
        DeploymentKind::Ollama(r) => assert_eq!(r.base_url, "http://127.0.0.1:11434"),
        k => panic!("{k:?}"),
    }
    let errs = load_dir(d.path(), &[("ADMIN", "a")]).unwrap_err().0.join("\n");
    assert!(errs.contains("DEV is not set"), "{errs}");
}

#[test]
fn misplaced_settings_are_refused() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "tollgate.toml", "");
    write(
        d.path(),
        "routes/a.toml",
        "[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"http://h/v1\"\nmodel = \"m\"\ncontext = 10\n",
    );
    let errs = load_dir(d.path(), &[]).unwrap_err().0.join("\n");
    assert!(errs.contains("alias[0].deployment[0].context: not a setting of kind = \"openai\""), "{errs}");
}

#[test]
fn responses_passthrough_is_an_openai_setting() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "tollgate.toml", "");
    let dep = |kind: &str, base: &str, value: &str| {
        format!("[[alias]]\nname = \"chat\"\n[[alias.deployment]]\nname = \"up\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\nmodel = \"m\"\nresponses = \"{value}\"\n")
    };
    write(d.path(), "routes/a.toml", &dep("openai", "http://h/v1", "passthrough"));
    let c = load_dir(d.path(), &[]).unwrap();
    assert!(matches!(&c.aliases[0].deployments[0].kind, DeploymentKind::OpenAi(r) if r.responses_passthrough));
    write(d.path(), "routes/a.toml", &dep("openai", "http://h/v1", "translate"));
    let c = load_dir(d.path(), &[]).unwrap();
    assert!(matches!(&c.aliases[0].deployments[0].kind, DeploymentKind::OpenAi(r) if !r.responses_passthrough));
    write(d.path(), "routes/a.toml", &dep("openai", "http://h/v1", "native"));
    let errs = load_dir(d.path(), &[]).unwrap_err().0.join("\n");
    assert!(errs.contains("deployment[0].responses: 'native' is not \"translate\" or \"passthrough\""), "{errs}");
    write(d.path(), "routes/a.toml", &dep("ollama", "http://h:11434", "passthrough"));
    let errs = load_dir(d.path(), &[]).unwrap_err().0.join("\n");
    assert!(errs.contains("deployment[0].responses: Ollama has no Responses API"), "{errs}");
}

#[test]
fn guardrails_are_read_at_each_scope_and_checked() {
    use crate::guardrails::{detect, Action, Scope};
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "tollgate.toml",
        "[guardrails]\ndefault = \"redact\"\ndetectors = { email = \"log\" }\n[auth]\n[[auth.keys]]\nname = \"k\"\nsha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\naliases = [\"*\"]\nguardrails = { default = \"block\" }\n",
    );
    let route = |g: &str| {
        format!("[[alias]]\nname = \"chat\"\n{g}\n[[alias.deployment]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"http://h/v1\"\nmodel = \"m\"\n")
    };
    write(d.path(), "routes/a.toml", &route("guardrails = { detectors = { jwt = \"off\" } }"));
    let c = load_dir(d.path(), &[]).unwrap();
    let email = detect::index("email").unwrap();
    assert_eq!(
        c.server.guardrails,
        Some(Scope { default: Some(Action::Redact), detectors: vec![(email, Action::Log)] })
    );
    assert_eq!(c.auth.keys[0].guardrails.as_ref().and_then(|s| s.default), Some(Action::Block));
    assert_eq!(
        c.aliases[0].guardrails.as_ref().map(|s| s.detectors.clone()),
        Some(vec![(detect::index("jwt").unwrap(), Action::Off)])
    );
    write(d.path(), "routes/a.toml", &route("guardrails = { default = \"deny\", detectors = { jwts = \"off\" } }"));
    let errs = load_dir(d.path(), &[]).unwrap_err().0.join("\n");
    assert!(
        errs.contains("a.toml: alias[0].guardrails: default = \"deny\" must be one of block, redact, log, off"),
        "{errs}"
    );
}

#[test]
fn file_errors_name_the_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("none.toml");
    let e = load_paths(Some(&missing)).unwrap_err();
    assert_eq!(e.to_string(), format!("{}: the config file does not exist", missing.display()));

    let p = write(d.path(), "a.toml", "listen = \"127.0.0.1:1\"\ndata_dir = 7\n");
    let e = load_paths(Some(&p)).unwrap_err();
    assert!(matches!(&e, FileError::Parse { line: Some(2), key: Some(k), .. } if k == "data_dir"), "{e:?}");
    assert!(e.to_string().starts_with(&format!("{} (line 2): data_dir: ", p.display())), "{e}");

    let p = write(d.path(), "b.toml", "listen = \n");
    let e = load_paths(Some(&p)).unwrap_err();
    assert!(matches!(&e, FileError::Parse { line: Some(1), key: None, .. }), "{e:?}");
    assert!(e.to_string().starts_with(&format!("{} (line 1): ", p.display())), "{e}");

    let (data, registry) = load_paths(Some(&write(d.path(), "c.toml", "data_dir = \"d\"\n"))).unwrap();
    assert_eq!((data.clone(), registry), (d.path().join("d"), d.path().join("d").join("registry")));
}
