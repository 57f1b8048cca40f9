//! `dropship init`: a first, commented `dropship.toml` from what the repository holds: the
//! compose file, which of its services have a healthcheck (so `up --wait` is a real health
//! gate) and the variable names of `.env.example` (as `required_env`). It never overwrites a
//! file: an existing `dropship.toml` is an error and nothing is changed.
//!
//! Functional core, thin shell: [`RepoFacts::read`] reads the few files, [`render`] and
//! [`next_steps`] are pure, [`write_new`] creates the file only if it does not exist yet.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use dropship_contract::config::CONFIG_FILE;
use dropship_contract::manifest::{is_env_name, DeploySettings};

use crate::OpsError;

/// Compose file names `docker compose` looks for, in its order of preference.
pub const COMPOSE_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];
/// Where the variable names for `required_env` come from.
pub const ENV_EXAMPLE: &str = ".env.example";
/// Environments the file starts with (the infra module's default).
pub const ENVIRONMENTS: [&str; 2] = ["staging", "production"];

/// One compose service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name under `services:`.
    pub name: String,
    /// Whether it declares a `healthcheck:` (not `disable: true`).
    pub healthcheck: bool,
}

/// What `init` found in the repository.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RepoFacts {
    /// App name derived from the repository's directory name.
    pub app: String,
    /// The compose file found, if any.
    pub compose_file: Option<String>,
    /// Its services, in file order.
    pub services: Vec<Service>,
    /// Why the compose file could not be read, if it could not.
    pub compose_problem: Option<String>,
    /// Variable names of `.env.example`, in file order; `None` without the file.
    pub env_names: Option<Vec<String>>,
}

/// An app name (`[a-z0-9][a-z0-9-]{0,62}`) from a directory name: lower case, other
/// characters as `-`, no leading or doubled `-`; `app` when nothing is left.
pub fn app_name_from(dir_name: &str) -> String {
    let mut out = String::new();
    for c in dir_name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "app".into()
    } else {
        trimmed.into()
    }
}

/// The services of a compose file and whether each declares a healthcheck.
pub fn compose_services(text: &str) -> Result<Vec<Service>, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let Some(doc) = docs.first() else {
        return Ok(Vec::new());
    };
    let services = match &doc["services"] {
        Yaml::Hash(h) => h,
        Yaml::BadValue | Yaml::Null => return Ok(Vec::new()),
        _ => return Err("`services` is not a mapping".into()),
    };
    Ok(services
        .iter()
        .filter_map(|(name, body)| {
            let name = name.as_str()?.to_string();
            let check = &body["healthcheck"];
            let healthcheck = check.as_hash().is_some() && check["disable"].as_bool() != Some(true);
            Some(Service { name, healthcheck })
        })
        .collect())
}

/// Variable names assigned in a `.env`-style file (`NAME=…`, `export NAME=…`), each once, in
/// file order; comments, blank lines and names the host would refuse are skipped.
pub fn env_names(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        if line.starts_with('#') {
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim_end();
        if is_env_name(name) && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

impl RepoFacts {
    /// Reads the facts of the repository at `root` (the compose file and `.env.example`).
    pub fn read(root: &Path) -> Self {
        let dir_name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut facts = RepoFacts {
            app: app_name_from(&dir_name),
            ..RepoFacts::default()
        };
        if let Some(name) = COMPOSE_FILES.iter().find(|f| root.join(f).is_file()) {
            facts.compose_file = Some(name.to_string());
            match std::fs::read_to_string(root.join(name))
                .map_err(|e| e.to_string())
                .and_then(|t| compose_services(&t))
            {
                Ok(services) => facts.services = services,
                Err(why) => facts.compose_problem = Some(why),
            }
        }
        if let Ok(text) = std::fs::read_to_string(root.join(ENV_EXAMPLE)) {
            facts.env_names = Some(env_names(&text));
        }
        facts
    }

    fn names(&self, healthcheck: bool) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| s.healthcheck == healthcheck)
            .map(|s| s.name.as_str())
            .collect()
    }
}

/// TOML string literal (basic string, escaped).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quoted(i)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The commented `dropship.toml` for `facts` (pure). It parses and validates as it is; the
/// values to check are said in comments.
pub fn render(facts: &RepoFacts) -> String {
    let defaults = DeploySettings::default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# dropship.toml, written by `dropship init` from what this repository holds."
    );
    let _ = writeln!(
        t,
        "# Every key is explained in the README (\"dropship.toml reference\"). Check the values,"
    );
    let _ = writeln!(
        t,
        "# then commit this file: bundles carry its [deploy] settings to the hosts."
    );
    t.push('\n');
    let _ = writeln!(
        t,
        "# The app's name in S3 keys and instance tags (dropship:app), from the directory name."
    );
    let _ = writeln!(t, "app = {}", quoted(&facts.app));
    let _ = writeln!(
        t,
        "# The versioned artifact bucket (the infra module's bucket_name) and its region:"
    );
    let _ = writeln!(t, "# bucket = \"my-artifacts\"");
    let _ = writeln!(t, "# region = \"eu-west-1\"");
    let envs: Vec<String> = ENVIRONMENTS.iter().map(|e| e.to_string()).collect();
    let _ = writeln!(
        t,
        "# Environments deployed to (instance tag dropship:env); uploads go to default_env."
    );
    let _ = writeln!(t, "environments = {}", list(&envs));
    let _ = writeln!(t, "default_env = {}", quoted(&envs[0]));
    t.push('\n');
    let _ = writeln!(
        t,
        "# How a release runs on the host (the same for every environment unless overridden"
    );
    let _ = writeln!(t, "# below).");
    let _ = writeln!(t, "[deploy]");
    match (&facts.compose_file, &facts.compose_problem) {
        (Some(file), None) => {
            let _ = writeln!(t, "compose_file = {}", quoted(file));
        }
        (Some(file), Some(why)) => {
            let _ = writeln!(
                t,
                "# {file} could not be read ({why}): fix it before deploying."
            );
            let _ = writeln!(t, "compose_file = {}", quoted(file));
        }
        (None, _) => {
            let _ = writeln!(
                t,
                "# No compose file found (looked for {}): create one, or name yours here.",
                COMPOSE_FILES.join(", ")
            );
            let _ = writeln!(t, "compose_file = {}", quoted(&defaults.compose_file));
        }
    }
    let (checked, unchecked) = (facts.names(true), facts.names(false));
    if !checked.is_empty() {
        let _ = writeln!(
            t,
            "# Health: the host runs `docker compose up --wait`, which waits until these services'"
        );
        let _ = writeln!(
            t,
            "# healthchecks pass, and rolls back if they do not: {}.",
            checked.join(", ")
        );
        if !unchecked.is_empty() {
            let _ = writeln!(
                t,
                "# Without a healthcheck (only checked for running): {}.",
                unchecked.join(", ")
            );
        }
        let _ = writeln!(
            t,
            "# A URL polled after that is an extra gate, if you want one:"
        );
    } else {
        let _ = writeln!(
            t,
            "# Health: no service declares a `healthcheck:`, so `up --wait` only waits for the"
        );
        let _ = writeln!(
            t,
            "# containers to start. Add a healthcheck to the service that serves traffic, or set a"
        );
        let _ = writeln!(
            t,
            "# URL the host polls after `compose up` (rolled back when it does not answer 2xx):"
        );
    }
    let _ = writeln!(t, "# health_url = \"http://127.0.0.1:8080/health\"");
    let _ = writeln!(t, "health_timeout_secs = {}", defaults.health_timeout_secs);
    let _ = writeln!(
        t,
        "# Host paths under shared/ linked into every release (data outlives releases)."
    );
    let _ = writeln!(t, "shared_paths = {}", list(&defaults.shared_paths));
    let _ = writeln!(t, "keep_releases = {}", defaults.keep_releases);
    match &facts.env_names {
        Some(names) if !names.is_empty() => {
            let _ = writeln!(
                t,
                "# From {ENV_EXAMPLE}: each must be set in the host's shared/.env before a release"
            );
            let _ = writeln!(t, "# switches (a table such as {{ name = \"SECRET_KEY\", min_length = 32 }} checks more).");
            let _ = writeln!(t, "required_env = {}", list(names));
        }
        Some(_) => {
            let _ = writeln!(
                t,
                "# {ENV_EXAMPLE} names no variable; list the ones the host's shared/.env must set:"
            );
            let _ = writeln!(t, "# required_env = [\"DATABASE_URL\"]");
        }
        None => {
            let _ = writeln!(
                t,
                "# Variables the host's shared/.env must set (no {ENV_EXAMPLE} was found):"
            );
            let _ = writeln!(t, "# required_env = [\"DATABASE_URL\"]");
        }
    }
    t.push('\n');
    let _ = writeln!(
        t,
        "# One environment's changes to [deploy] (any [deploy] key), e.g. another compose profile:"
    );
    let _ = writeln!(t, "# [env.production.deploy]");
    let _ = writeln!(t, "# profiles = [\"production\"]");
    t
}

/// What to do after `init` (pure).
pub fn next_steps(facts: &RepoFacts, path: &Path) -> String {
    let mut out = format!("Wrote {}.\nNext steps:\n", path.display());
    let mut steps = vec![format!(
        "Review it: set `bucket` and `region` (the infra module's bucket), and the environments you deploy (app {:?}, environments {}).",
        facts.app,
        ENVIRONMENTS.join(", ")
    )];
    if facts.compose_file.is_none() {
        steps.push(format!(
            "Add a compose file ({}) or set `compose_file`.",
            COMPOSE_FILES[0]
        ));
    }
    if let Some(why) = &facts.compose_problem {
        steps.push(format!("Fix the compose file: {why}."));
    }
    if facts.names(true).is_empty() {
        steps.push(
            "Give the service that serves traffic a `healthcheck:`, or set `health_url`.".into(),
        );
    }
    steps.push(format!(
        "On every host, put the app's variables in its app root's shared/.env (by default /opt/dropship/{}/shared/.env){}.",
        facts.app,
        match &facts.env_names {
            Some(n) if !n.is_empty() => format!(" ({} required: {})", n.len(), n.join(", ")),
            _ => String::new(),
        }
    ));
    steps.push("Create the AWS side with infra/ (README there) and tag the hosts dropship:app / dropship:env; `dropship doctor` checks it.".into());
    steps.push("Commit dropship.toml, then deploy with `bundle-and-upload --wait`.".into());
    for (i, s) in steps.iter().enumerate() {
        let _ = writeln!(out, "  {}. {s}", i + 1);
    }
    out
}

/// Creates `path` with `text`, never replacing a file: an existing one is
/// [`OpsError::ConfigExists`] and is left as it was.
pub fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(OpsError::ConfigExists {
                path: path.to_path_buf(),
            }
            .into())
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    };
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Where `init` writes: `dropship.toml` at the top of the git repository containing `dir`,
/// or in `dir` itself outside a repository.
pub fn config_path(root: &Path) -> PathBuf {
    root.join(CONFIG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropship_contract::config::{Config, ConfigFile, Overrides};
    use dropship_contract::manifest::EnvRule;

    /// A temporary repository directory named `name` holding `files`.
    fn repo(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(name);
        std::fs::create_dir(&root).unwrap();
        for (rel, text) in files {
            std::fs::write(root.join(rel), text).unwrap();
        }
        (tmp, root)
    }

    /// `text` as `Config::resolve` reads it (what `bundle-and-upload` would do with it).
    fn resolved(text: &str) -> Config {
        let path = Path::new("dropship.toml");
        Config::resolve(
            path,
            ConfigFile::parse(path, text).unwrap(),
            Overrides::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const COMPOSE: &str = "services:\n  web:\n    image: shop:1\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"http://127.0.0.1:8080/\"]\n  worker:\n    image: shop:1\n  db:\n    image: postgres:16\n    healthcheck:\n      disable: true\n";

    #[test]
    fn a_repo_with_compose_healthchecks_and_env_example_gives_a_valid_commented_config() {
        let (_tmp, root) = repo(
            "My Shop_2",
            &[
                ("docker-compose.yml", COMPOSE),
                (
                    ".env.example",
                    "# database\nDATABASE_URL=postgres://localhost/shop\nexport SECRET_KEY=\n\nbad name=1\nDATABASE_URL=again\nMODE = dev\n",
                ),
            ],
        );
        let facts = RepoFacts::read(&root);
        assert_eq!(facts.app, "my-shop-2");
        assert_eq!(facts.compose_file.as_deref(), Some("docker-compose.yml"));
        assert_eq!(
            facts.services,
            vec![
                Service {
                    name: "web".into(),
                    healthcheck: true
                },
                Service {
                    name: "worker".into(),
                    healthcheck: false
                },
                Service {
                    name: "db".into(),
                    healthcheck: false
                },
            ]
        );
        let text = render(&facts);
        let c = resolved(&text);
        assert_eq!(c.key.app(), "my-shop-2");
        assert_eq!(c.key.env(), "staging");
        assert_eq!(c.bucket, None, "the bucket is left for the user to set");
        assert_eq!(c.deploy.compose_file, "docker-compose.yml");
        assert_eq!(c.deploy.health_url, None, "up --wait is the health gate");
        assert_eq!(
            c.deploy.required_env,
            vec![
                EnvRule::named("DATABASE_URL"),
                EnvRule::named("SECRET_KEY"),
                EnvRule::named("MODE")
            ]
        );
        assert!(
            text.contains("healthchecks pass, and rolls back if they do not: web."),
            "{text}"
        );
        assert!(
            text.contains("only checked for running): worker, db."),
            "{text}"
        );
        assert!(text.contains("# [env.production.deploy]"), "{text}");
        let steps = next_steps(&facts, &root.join(CONFIG_FILE));
        assert!(
            steps.contains("`bucket`")
                && steps.contains("3 required: DATABASE_URL, SECRET_KEY, MODE"),
            "{steps}"
        );
        assert!(!steps.contains("healthcheck"), "{steps}");
    }

    #[test]
    fn without_healthchecks_compose_or_env_example_it_says_what_to_add() {
        let (_tmp, root) = repo(
            "svc",
            &[("compose.yaml", "services:\n  web:\n    image: x\n")],
        );
        let facts = RepoFacts::read(&root);
        let text = render(&facts);
        let c = resolved(&text);
        assert_eq!(c.deploy.compose_file, "compose.yaml");
        assert!(c.deploy.required_env.is_empty());
        assert!(
            text.contains("no service declares a `healthcheck:`"),
            "{text}"
        );
        assert!(text.contains("no .env.example was found"), "{text}");
        let steps = next_steps(&facts, Path::new("dropship.toml"));
        assert!(
            steps.contains("`healthcheck:`, or set `health_url`"),
            "{steps}"
        );

        let (_tmp, empty) = repo("---", &[]);
        let facts = RepoFacts::read(&empty);
        assert_eq!(facts.app, "app");
        let text = render(&facts);
        assert!(text.contains("No compose file found"), "{text}");
        assert_eq!(resolved(&text).deploy.compose_file, "compose.yaml");
        assert!(next_steps(&facts, Path::new("x")).contains("Add a compose file"));

        let (_tmp, broken) = repo("b", &[("compose.yaml", "services: [\n")]);
        let facts = RepoFacts::read(&broken);
        assert!(facts
            .compose_problem
            .as_deref()
            .unwrap()
            .contains("not valid YAML"));
        let text = render(&facts);
        assert!(text.contains("could not be read"), "{text}");
        resolved(&text);
    }

    #[test]
    fn an_existing_config_is_never_overwritten() {
        let (_tmp, root) = repo("shop", &[(CONFIG_FILE, "app = \"mine\"\n")]);
        let path = config_path(&root);
        let err = write_new(&path, "app = \"theirs\"\n").unwrap_err();
        let ops = err.downcast_ref::<OpsError>().expect("an OpsError");
        assert!(ops.is_usage());
        let msg = err.to_string();
        assert!(
            msg.contains("already exists") && msg.contains("nothing was changed"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "app = \"mine\"\n");
        // A new file is written whole.
        let (_tmp, fresh) = repo("shop", &[]);
        let path = config_path(&fresh);
        write_new(&path, "app = \"shop\"\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "app = \"shop\"\n");
    }

    #[test]
    fn names_and_services_are_read_leniently_but_only_valid_names_kept() {
        assert_eq!(app_name_from("Shop"), "shop");
        assert_eq!(app_name_from("-a..b-"), "a-b");
        assert_eq!(app_name_from(&"x".repeat(80)).len(), 63);
        assert_eq!(app_name_from("日本"), "app");
        assert_eq!(env_names("A=1\n#B=2\n 1X=3\nexport  C=\nD\n"), ["A", "C"]);
        assert_eq!(compose_services("").unwrap(), vec![]);
        assert_eq!(compose_services("version: '3'\n").unwrap(), vec![]);
        assert!(compose_services("services: 3\n").is_err());
    }
}
