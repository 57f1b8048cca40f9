//! The manifest (first entry of every bundle) and the deploy settings it carries from
//! `dropship.toml` to the host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fleet::OnFailure;

/// Path of the manifest inside a bundle; it must be the first entry.
pub const MANIFEST_PATH: &str = ".dropship/manifest.json";
/// Directory inside a bundle reserved for dropship's own files.
pub const DROPSHIP_DIR: &str = ".dropship";

/// How a release is run on the host. Lives in `[deploy]` of `dropship.toml` and travels in
/// the manifest; where it lands on disk and which hosts get it are *not* here (trust boundary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySettings {
    /// Compose file inside the bundle.
    pub compose_file: String,
    /// Compose profiles to enable.
    pub profiles: Vec<String>,
    /// URL polled after `compose up`; `None` relies on `up --wait` alone.
    pub health_url: Option<String>,
    /// Seconds the health gate waits before rolling back.
    pub health_timeout_secs: u32,
    /// Paths under the host's `shared/` linked into every release (e.g. `.env`, `data`).
    pub shared_paths: Vec<String>,
    /// Releases kept on the host, counting the current one (the current, previous and last
    /// good are never pruned, even beyond this number).
    pub keep_releases: u32,
    /// Rules for variables of the host's `shared/.env`, checked before switching.
    pub required_env: Vec<EnvRule>,
    /// Script inside the bundle run before the switch (migrations, backups).
    pub pre_switch_hook: Option<String>,
    /// What the rollout does when a host fails (`rollback-fleet` or `leave`); read by the
    /// Lambda, never sent to hosts.
    pub on_failure: OnFailure,
    /// How a release replaces the running one (`recreate` or `start-first`). Left out of the
    /// manifest when it is the default, so manifests of configs that do not set it keep
    /// their bytes.
    #[serde(skip_serializing_if = "Strategy::is_recreate")]
    pub strategy: Strategy,
    /// The proxy that start-first switches traffic through (`[deploy.proxy]`); required by,
    /// and only allowed with, `strategy = "start-first"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
}

/// How a release replaces the running one on a host.
///
/// Under both, a service is recreated only when its own definition changed (a database in
/// the same compose file is never restarted for nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Changed services are stopped and started again (`compose up --force-recreate` of
    /// those services): a web service is unreachable while its container restarts.
    #[default]
    Recreate,
    /// The proxied web service's new container starts beside the old one, is checked
    /// directly, takes the traffic in one switch of the proxy, and the old one drains.
    StartFirst,
}

impl Strategy {
    /// The name in `dropship.toml`, the manifest and `DROPSHIP_STRATEGY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Recreate => "recreate",
            Strategy::StartFirst => "start-first",
        }
    }

    fn is_recreate(&self) -> bool {
        *self == Strategy::Recreate
    }
}

/// The image of the proxy when `[deploy.proxy]` names none: the official Caddy image.
pub const DEFAULT_PROXY_IMAGE: &str = "caddy:2.11.7";

/// `[deploy.proxy]`: the reverse proxy one app and environment owns on each host (a Caddy
/// container outside the compose project), and the web service it switches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// The compose service started beside the old one and switched (one container).
    pub service: String,
    /// The container port the proxy sends traffic to.
    pub port: u32,
    /// `IPv4:PORT` the proxy publishes on the host (what the service's `ports:` was).
    pub listen: String,
    /// Path checked on each new container, directly, before the switch (2xx is healthy).
    #[serde(default = "default_health_path")]
    pub health_path: String,
    /// Seconds old containers get to finish their requests after the switch.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: u32,
    /// The proxy's image (pulled when absent).
    #[serde(default = "default_proxy_image")]
    pub image: String,
}

fn default_health_path() -> String {
    "/".into()
}
fn default_drain_timeout() -> u32 {
    30
}
fn default_proxy_image() -> String {
    DEFAULT_PROXY_IMAGE.into()
}

impl Default for DeploySettings {
    fn default() -> Self {
        Self {
            compose_file: "compose.yaml".into(),
            profiles: Vec::new(),
            health_url: None,
            health_timeout_secs: 60,
            shared_paths: vec![".env".into()],
            keep_releases: 5,
            required_env: Vec::new(),
            pre_switch_hook: None,
            on_failure: OnFailure::default(),
            strategy: Strategy::default(),
            proxy: None,
        }
    }
}

/// The bounds of every deploy setting. The host script (`scripts/deploy-on-host.sh`,
/// `validate_deploy`) enforces exactly the same numbers; the host-script suite and the unit
/// tests below probe both sides at and past each bound, so a bundle the Lambda verified is
/// never refused by a host (and the other way round).
pub mod bounds {
    /// Longest relative path (compose file, hook, each shared path), in bytes.
    pub const MAX_PATH_LEN: usize = 255;
    /// Longest compose profile name.
    pub const MAX_PROFILE_LEN: usize = 64;
    /// Most profiles.
    pub const MAX_PROFILES: usize = 16;
    /// Longest health URL.
    pub const MAX_HEALTH_URL_LEN: usize = 2048;
    /// Health timeout range, seconds.
    pub const HEALTH_TIMEOUT_SECS: std::ops::RangeInclusive<u32> = 1..=3600;
    /// Most shared paths.
    pub const MAX_SHARED_PATHS: usize = 16;
    /// Releases kept range.
    pub const KEEP_RELEASES: std::ops::RangeInclusive<u32> = 2..=100;
    /// Most `required_env` rules.
    pub const MAX_ENV_RULES: usize = 32;
    /// Longest variable name.
    pub const MAX_ENV_NAME_LEN: usize = 64;
    /// Largest `min_length` of a rule, bytes.
    pub const MAX_ENV_MIN_LENGTH: u32 = 4096;
    /// Longest `pattern` of a rule, bytes.
    pub const MAX_ENV_PATTERN_LEN: usize = 128;
    /// Largest repetition count in a pattern (`{m,n}`).
    pub const MAX_PATTERN_REPEAT: u32 = 255;
    /// Longest compose service name (`[deploy.proxy] service`).
    pub const MAX_SERVICE_LEN: usize = 64;
    /// Longest `[deploy.proxy] health_path`.
    pub const MAX_HEALTH_PATH_LEN: usize = 1024;
    /// `[deploy.proxy] drain_timeout_secs` range.
    pub const DRAIN_TIMEOUT_SECS: std::ops::RangeInclusive<u32> = 0..=3600;
    /// Longest proxy image reference.
    pub const MAX_IMAGE_LEN: usize = 200;
}

impl DeploySettings {
    /// The largest settings [`bounds`] allow (every list full, every string at its longest):
    /// what sizes the command the Lambda renders against SSM's limit.
    pub fn largest_allowed() -> Self {
        use bounds::*;
        // A path of exactly `n` bytes: `d/d/…/x` (or `…/xx` when `n` is even).
        let long = |n: usize| format!("{}{}", "d/".repeat((n - 1) / 2), "x".repeat(2 - n % 2));
        Self {
            compose_file: long(MAX_PATH_LEN),
            profiles: (0..MAX_PROFILES)
                .map(|i| format!("{i:0>width$}", width = MAX_PROFILE_LEN))
                .collect(),
            health_url: Some(format!("http://h/{}", "a".repeat(MAX_HEALTH_URL_LEN - 9))),
            health_timeout_secs: *HEALTH_TIMEOUT_SECS.end(),
            shared_paths: (0..MAX_SHARED_PATHS)
                .map(|i| format!("{i:x}{}", long(MAX_PATH_LEN - 1)))
                .collect(),
            keep_releases: *KEEP_RELEASES.end(),
            required_env: (0..MAX_ENV_RULES)
                .map(|i| EnvRule {
                    name: format!("{}{i:02}", "V".repeat(MAX_ENV_NAME_LEN - 2)),
                    min_length: MAX_ENV_MIN_LENGTH,
                    pattern: Some("a".repeat(MAX_ENV_PATTERN_LEN)),
                })
                .collect(),
            pre_switch_hook: Some(format!("h{}", long(MAX_PATH_LEN - 1))),
            on_failure: OnFailure::default(),
            strategy: Strategy::StartFirst,
            proxy: Some(ProxySettings {
                service: "s".repeat(MAX_SERVICE_LEN),
                port: 65535,
                listen: "255.255.255.255:65535".into(),
                health_path: format!("/{}", "p".repeat(MAX_HEALTH_PATH_LEN - 1)),
                drain_timeout_secs: *DRAIN_TIMEOUT_SECS.end(),
                image: format!("i{}", "m".repeat(MAX_IMAGE_LEN - 1)),
            }),
        }
    }
}

/// One `required_env` rule: the variable must be present in the host's `shared/.env` and,
/// optionally, at least `min_length` bytes long (`non_empty = true` is `min_length = 1`) and
/// entirely match `pattern` (POSIX extended regular expression, bytes, C locale).
///
/// In `dropship.toml` a rule is a plain name (`"DATABASE_URL"`, presence only) or a table
/// (`{ name = "SECRET_KEY", min_length = 32 }`). A plain rule serialises back to a plain
/// string, so manifests of configs that only use names keep their bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvRule {
    pub name: String,
    /// Shortest accepted value in bytes; 0 accepts `NAME=` (presence only).
    pub min_length: u32,
    /// Pattern the whole value must match.
    pub pattern: Option<String>,
}

impl EnvRule {
    /// A presence-only rule.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    fn is_plain(&self) -> bool {
        self.min_length == 0 && self.pattern.is_none()
    }
}

impl From<&str> for EnvRule {
    fn from(name: &str) -> Self {
        Self::named(name)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvRuleTable {
    name: String,
    #[serde(default, skip_serializing)]
    non_empty: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    min_length: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pattern: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Serialize for EnvRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_plain() {
            return s.serialize_str(&self.name);
        }
        EnvRuleTable {
            name: self.name.clone(),
            non_empty: false,
            min_length: self.min_length,
            pattern: self.pattern.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for EnvRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RuleVisitor;
        impl<'de> serde::de::Visitor<'de> for RuleVisitor {
            type Value = EnvRule;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a variable name, or a table { name, non_empty, min_length, pattern }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvRule, E> {
                Ok(EnvRule::named(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EnvRule, A::Error> {
                let t =
                    EnvRuleTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let min_length = if t.non_empty {
                    t.min_length.max(1)
                } else {
                    t.min_length
                };
                Ok(EnvRule {
                    name: t.name,
                    min_length,
                    pattern: t.pattern,
                })
            }
        }
        d.deserialize_any(RuleVisitor)
    }
}

/// A deploy setting that would be unsafe or meaningless on a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deploy setting {field} = {value:?} is invalid: {expected}")]
pub struct SettingsError {
    pub field: &'static str,
    pub value: String,
    pub expected: String,
}

/// A relative path that cannot leave the release directory: at most
/// [`bounds::MAX_PATH_LEN`] bytes, no leading `/`, no empty, `.` or `..` components, only
/// `[A-Za-z0-9._-]` in each component.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= bounds::MAX_PATH_LEN
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

/// Whether `path` is `dir` or lies beneath it, comparing whole components.
fn is_within(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most [`bounds::MAX_ENV_NAME_LEN`] bytes.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= bounds::MAX_ENV_NAME_LEN
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`bounds::MAX_PROFILE_LEN`] bytes.
pub fn is_profile_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= bounds::MAX_PROFILE_LEN
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Checks a `required_env` pattern: printable ASCII, at most
/// [`bounds::MAX_ENV_PATTERN_LEN`] bytes, in a subset of POSIX ERE that glibc's `regcomp`
/// (bash `[[ =~ ]]` on the host) accepts with one meaning: literals, `.`, bracket expressions
/// (ranges, `^` negation, `[:class:]`), groups, `|`, one quantifier per atom (`* + ?
/// {m} {m,} {m,n}`, n ≤ 255), `\` before punctuation (not `< > ` ' `), `^` only first and `$` only last.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > bounds::MAX_ENV_PATTERN_LEN {
        return Err(format!("1 to {} bytes", bounds::MAX_ENV_PATTERN_LEN));
    }
    if !p.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err("printable ASCII only".into());
    }
    let b = p.as_bytes();
    let (mut i, end) = (
        usize::from(b[0] == b'^'),
        b.len() - usize::from(b.len() > 1 && b[b.len() - 1] == b'$' && b[b.len() - 2] != b'\\'),
    );
    let mut depth = 0usize;
    // Whether the previous item can take a quantifier, and whether the current branch is empty.
    let (mut atom, mut empty) = (false, true);
    while i < end {
        let c = b[i];
        i += 1;
        match c {
            b'(' => {
                depth += 1;
                (atom, empty) = (false, true);
            }
            b')' => {
                if depth == 0 || empty {
                    return Err("unbalanced or empty group".into());
                }
                depth -= 1;
                (atom, empty) = (true, false);
            }
            b'|' => {
                if empty {
                    return Err("empty alternative".into());
                }
                (atom, empty) = (false, true);
            }
            b'*' | b'+' | b'?' | b'{' => {
                if !atom {
                    return Err("a quantifier must follow an atom (one quantifier per atom)".into());
                }
                if c == b'{' {
                    let close = b[i..end]
                        .iter()
                        .position(|&x| x == b'}')
                        .ok_or("unclosed {")?;
                    let body = std::str::from_utf8(&b[i..i + close]).unwrap_or_default();
                    let (m, n) = body.split_once(',').unwrap_or((body, body));
                    let num = |s: &str| -> Option<u32> {
                        (!s.is_empty() && s.len() <= 3 && s.bytes().all(|d| d.is_ascii_digit()))
                            .then(|| s.parse().ok())
                            .flatten()
                    };
                    let m = num(m).ok_or("repetition {m,n} needs numbers")?;
                    let n = if n.is_empty() {
                        m
                    } else {
                        num(n).ok_or("repetition {m,n} needs numbers")?
                    };
                    if m > n || n > bounds::MAX_PATTERN_REPEAT {
                        return Err(format!(
                            "repetition needs m <= n <= {}",
                            bounds::MAX_PATTERN_REPEAT
                        ));
                    }
                    i += close + 1;
                }
                atom = false;
            }
            b'\\' => {
                match b.get(i) {
                    // GNU gives \< \> \` \' a meaning (anchors): refused.
                    Some(x) if i < end && x.is_ascii_punctuation() && !b"<>`'".contains(x) => {
                        i += 1
                    }
                    _ => return Err("\\ may only escape punctuation other than < > ` '".into()),
                }
                (atom, empty) = (true, false);
            }
            b'[' => {
                i += usize::from(b.get(i) == Some(&b'^'));
                // A ']' right after '[' or '[^' is a literal.
                i += usize::from(b.get(i) == Some(&b']'));
                loop {
                    match b.get(i) {
                        None => return Err("unclosed [".into()),
                        Some(b']') => break,
                        Some(b'[') if b.get(i + 1) == Some(&b':') => {
                            let rest = &p[i + 2..];
                            let close = rest.find(":]").ok_or("unclosed [:class:]")?;
                            const CLASSES: [&str; 12] = [
                                "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower",
                                "print", "punct", "space", "upper", "xdigit",
                            ];
                            if !CLASSES.contains(&&rest[..close]) {
                                return Err("unknown [:class:]".into());
                            }
                            i += close + 4;
                        }
                        Some(b'[') if matches!(b.get(i + 1), Some(b'.' | b'=')) => {
                            return Err("[. .] and [= =] are not supported".into())
                        }
                        Some(&lo) => {
                            if b.get(i + 1) == Some(&b'-')
                                && !matches!(b.get(i + 2), Some(b']') | None)
                            {
                                if b[i + 2] < lo || b[i + 2] == b'[' {
                                    return Err("invalid range in [ ]".into());
                                }
                                i += 3;
                            } else {
                                i += 1;
                            }
                        }
                    }
                }
                if i >= end {
                    return Err("unclosed [".into());
                }
                i += 1;
                (atom, empty) = (true, false);
            }
            b'^' | b'$' | b']' | b'}' => {
                return Err(format!("{} must be escaped here", c as char));
            }
            _ => (atom, empty) = (true, false),
        }
    }
    if depth != 0 {
        return Err("unbalanced group".into());
    }
    if empty {
        return Err("empty pattern or alternative".into());
    }
    Ok(())
}

impl DeploySettings {
    /// Checks every field against [`bounds`]; the bundler calls it on config load, the
    /// Lambda on the manifest, and the host applies the same rules again.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field, value: &str, expected: String| SettingsError {
            field,
            value: value.to_string(),
            expected,
        };
        use bounds::*;
        let path_rule = format!(
            "a relative path of at most {MAX_PATH_LEN} bytes (letters, digits, . _ - and /; no empty, '.' or '..' component), outside .dropship/"
        );
        let in_bundle_path = |p: &str| is_safe_relative_path(p) && !is_within(p, DROPSHIP_DIR);
        if !in_bundle_path(&self.compose_file) {
            return Err(bad("compose_file", &self.compose_file, path_rule));
        }
        if self.profiles.len() > MAX_PROFILES {
            return Err(bad(
                "profiles",
                &self.profiles.join(","),
                format!("at most {MAX_PROFILES} profiles"),
            ));
        }
        if let Some(p) = self.profiles.iter().find(|p| !is_profile_name(p)) {
            return Err(bad(
                "profiles",
                p,
                format!("profile names of letters, digits, _ . - (starting with a letter or digit), at most {MAX_PROFILE_LEN} bytes"),
            ));
        }
        if let Some(url) = &self.health_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= MAX_HEALTH_URL_LEN
                && !url
                    .bytes()
                    .any(|b| b.is_ascii_control() || b.is_ascii_whitespace());
            if !ok {
                return Err(bad(
                    "health_url",
                    url,
                    format!("an http:// or https:// URL of at most {MAX_HEALTH_URL_LEN} bytes without spaces or control characters"),
                ));
            }
        }
        if !HEALTH_TIMEOUT_SECS.contains(&self.health_timeout_secs) {
            return Err(bad(
                "health_timeout_secs",
                &self.health_timeout_secs.to_string(),
                format!(
                    "{} to {} seconds",
                    HEALTH_TIMEOUT_SECS.start(),
                    HEALTH_TIMEOUT_SECS.end()
                ),
            ));
        }
        if let Some(hook) = &self.pre_switch_hook {
            if !in_bundle_path(hook) {
                return Err(bad("pre_switch_hook", hook, path_rule));
            }
        }
        if self.shared_paths.len() > MAX_SHARED_PATHS {
            return Err(bad(
                "shared_paths",
                &self.shared_paths.join(","),
                format!("at most {MAX_SHARED_PATHS} paths"),
            ));
        }
        for (i, p) in self.shared_paths.iter().enumerate() {
            if !in_bundle_path(p) {
                return Err(bad("shared_paths", p, path_rule));
            }
            // A shared path inside another would be removed through the other's link.
            if let Some(other) = self.shared_paths[..i]
                .iter()
                .find(|o| is_within(p, o) || is_within(o, p))
            {
                return Err(bad(
                    "shared_paths",
                    p,
                    format!(
                        "paths that do not repeat or contain one another (it overlaps {other:?})"
                    ),
                ));
            }
            // The compose file and the hook come from the bundle, never from shared/.
            let runs = std::iter::once(&self.compose_file).chain(&self.pre_switch_hook);
            if let Some(f) = runs.into_iter().find(|f| is_within(f, p)) {
                return Err(bad(
                    "shared_paths",
                    p,
                    format!("paths that do not hold the compose file or the hook ({f:?})"),
                ));
            }
        }
        if !KEEP_RELEASES.contains(&self.keep_releases) {
            return Err(bad(
                "keep_releases",
                &self.keep_releases.to_string(),
                format!(
                    "{} to {} (the current and the previous release are always kept)",
                    KEEP_RELEASES.start(),
                    KEEP_RELEASES.end()
                ),
            ));
        }
        if self.required_env.len() > MAX_ENV_RULES {
            return Err(bad(
                "required_env",
                "",
                format!("at most {MAX_ENV_RULES} rules"),
            ));
        }
        for (i, rule) in self.required_env.iter().enumerate() {
            if !is_env_name(&rule.name) {
                return Err(bad(
                    "required_env",
                    &rule.name,
                    format!("variable names like DATABASE_URL ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_ENV_NAME_LEN} bytes)"),
                ));
            }
            if self.required_env[..i].iter().any(|r| r.name == rule.name) {
                return Err(bad(
                    "required_env",
                    &rule.name,
                    "one rule per variable".into(),
                ));
            }
            if rule.min_length > MAX_ENV_MIN_LENGTH {
                return Err(bad(
                    "required_env",
                    &rule.name,
                    format!("min_length of at most {MAX_ENV_MIN_LENGTH}"),
                ));
            }
            if let Some(p) = &rule.pattern {
                check_pattern(p).map_err(|why| {
                    bad(
                        "required_env",
                        p,
                        format!("a pattern for {}: {why}", rule.name),
                    )
                })?;
            }
        }
        match (self.strategy, &self.proxy) {
            (Strategy::Recreate, None) => {}
            (Strategy::Recreate, Some(p)) => {
                return Err(bad(
                    "proxy",
                    &p.service,
                    "no [deploy.proxy] with strategy = \"recreate\" (set strategy = \"start-first\", or remove [deploy.proxy])".into(),
                ))
            }
            (Strategy::StartFirst, None) => {
                return Err(bad(
                    "strategy",
                    "start-first",
                    "a [deploy.proxy] table naming the service, port and listen address the proxy switches".into(),
                ))
            }
            (Strategy::StartFirst, Some(p)) => p.validate()?,
        }
        Ok(())
    }
}

impl ProxySettings {
    /// The same rules as the host script's `validate_deploy` (DROPSHIP_PROXY_*).
    pub fn validate(&self) -> Result<(), SettingsError> {
        use bounds::*;
        let bad = |field, value: &str, expected: String| SettingsError {
            field,
            value: value.to_string(),
            expected,
        };
        if !is_service_name(&self.service) {
            return Err(bad(
                "proxy.service",
                &self.service,
                format!("a compose service name ([A-Za-z0-9][A-Za-z0-9_.-]*, at most {MAX_SERVICE_LEN} bytes)"),
            ));
        }
        if !(1..=65535).contains(&self.port) {
            return Err(bad(
                "proxy.port",
                &self.port.to_string(),
                "a container port, 1 to 65535".into(),
            ));
        }
        if !is_listen_address(&self.listen) {
            return Err(bad(
                "proxy.listen",
                &self.listen,
                "IPv4:PORT such as 127.0.0.1:8080 or 0.0.0.0:80 (port 1 to 65535)".into(),
            ));
        }
        let path_ok = self.health_path.starts_with('/')
            && self.health_path.len() <= MAX_HEALTH_PATH_LEN
            && self.health_path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return Err(bad(
                "proxy.health_path",
                &self.health_path,
                format!("a path starting with / of at most {MAX_HEALTH_PATH_LEN} printable bytes without spaces"),
            ));
        }
        if !DRAIN_TIMEOUT_SECS.contains(&self.drain_timeout_secs) {
            return Err(bad(
                "proxy.drain_timeout_secs",
                &self.drain_timeout_secs.to_string(),
                format!(
                    "{} to {} seconds",
                    DRAIN_TIMEOUT_SECS.start(),
                    DRAIN_TIMEOUT_SECS.end()
                ),
            ));
        }
        let image_ok = self.image.len() <= MAX_IMAGE_LEN
            && self
                .image
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && self
                .image
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._/:@-".contains(&b));
        if !image_ok {
            return Err(bad(
                "proxy.image",
                &self.image,
                format!("an image reference such as {DEFAULT_PROXY_IMAGE} ([A-Za-z0-9._/:@-], at most {MAX_IMAGE_LEN} bytes)"),
            ));
        }
        Ok(())
    }
}

/// A compose service name as dropship accepts it: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most
/// [`bounds::MAX_SERVICE_LEN`] bytes.
pub fn is_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= bounds::MAX_SERVICE_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// `IPv4:PORT` with four decimal octets 0-255 (no leading zeros) and a port 1-65535.
pub fn is_listen_address(s: &str) -> bool {
    let Some((ip, port)) = s.rsplit_once(':') else {
        return false;
    };
    let number = |t: &str, max: u32| {
        !t.is_empty()
            && t.len() <= 5
            && t.bytes().all(|b| b.is_ascii_digit())
            && (t == "0" || !t.starts_with('0'))
            && t.parse::<u32>().is_ok_and(|n| n <= max)
    };
    let octets: Vec<&str> = ip.split('.').collect();
    octets.len() == 4 && octets.iter().all(|o| number(o, 255)) && number(port, 65535) && port != "0"
}

/// Seconds a host run needs, at most, from the switch to the end for these settings: the
/// new release's gate, the drain (start-first), and a rollback to a release with the same
/// gate. The host refuses to switch without that much time left before SSM's execution
/// timeout; the deployer refuses, before any host is touched, settings that could never fit.
pub fn switch_budget_secs(settings: &DeploySettings) -> u64 {
    let gate = 2 * u64::from(settings.health_timeout_secs) + 30;
    let drain = settings
        .proxy
        .as_ref()
        .map_or(0, |p| u64::from(p.drain_timeout_secs));
    2 * gate + drain + 15
}

/// The manifest shape this version writes and the deployer accepts. Format 1 carried the
/// environment inside the bytes (`env`), so one commit gave different bundles per environment;
/// format 2 carries no environment: the S3 key and metadata name it, and every environment's
/// settings travel together ([`Manifest::overrides`]).
pub const MANIFEST_FORMAT: u32 = 2;

/// One environment's changes to the base `[deploy]` settings (`[env.<name>.deploy]` in
/// `dropship.toml`): every field optional; a field left out keeps the base value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_releases: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_env: Option<Vec<EnvRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_switch_hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
}

impl DeployOverrides {
    /// `base` with every field this override sets replaced (not validated).
    pub fn apply(&self, base: &DeploySettings) -> DeploySettings {
        let b = base.clone();
        DeploySettings {
            compose_file: self.compose_file.clone().unwrap_or(b.compose_file),
            profiles: self.profiles.clone().unwrap_or(b.profiles),
            health_url: self.health_url.clone().or(b.health_url),
            health_timeout_secs: self.health_timeout_secs.unwrap_or(b.health_timeout_secs),
            shared_paths: self.shared_paths.clone().unwrap_or(b.shared_paths),
            keep_releases: self.keep_releases.unwrap_or(b.keep_releases),
            required_env: self.required_env.clone().unwrap_or(b.required_env),
            pre_switch_hook: self.pre_switch_hook.clone().or(b.pre_switch_hook),
            on_failure: self.on_failure.unwrap_or(b.on_failure),
            strategy: self.strategy.unwrap_or(b.strategy),
            // An environment that goes back to `recreate` drops the base's proxy unless it
            // names its own (which validation then refuses).
            proxy: match (self.strategy, &self.proxy) {
                (Some(Strategy::Recreate), None) => None,
                _ => self.proxy.clone().or(b.proxy),
            },
        }
    }
}

/// The effective deploy settings of `env`: `base` with `env`'s override applied (an
/// environment without one gets `base`), validated. What the deployer renders the host
/// command from, and what the bundler checks for every environment before writing a byte.
pub fn settings_for(
    base: &DeploySettings,
    overrides: &BTreeMap<String, DeployOverrides>,
    env: &str,
) -> Result<DeploySettings, SettingsError> {
    let settings = match overrides.get(env) {
        Some(o) => o.apply(base),
        None => base.clone(),
    };
    settings.validate()?;
    Ok(settings)
}

/// Why manifest bytes cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest format {0} was written by an older bundle-and-upload (it carries the environment inside the bundle); this deployer reads format {MANIFEST_FORMAT}: rebuild the commit with the current bundle-and-upload and upload it again")]
    OlderFormat(u32),
    #[error("manifest format {0} is newer than this deployer reads (format {MANIFEST_FORMAT}): upgrade the deployer")]
    NewerFormat(u32),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// The first entry of every bundle: what it is and how to run it. Only facts that are the same
/// for the same commit and config, whatever environment it is uploaded to, so bundles stay
/// byte-reproducible and a bundle can be promoted from one environment to the next unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Contract version ([`MANIFEST_FORMAT`]).
    pub format: u32,
    pub app: String,
    pub branch: String,
    pub commit: String,
    /// Commit time, seconds since the epoch (also every entry's mtime).
    pub commit_time: i64,
    pub dirty: bool,
    /// First line of the commit message.
    pub message: String,
    /// Number of entries after the manifest (files, directories, symlinks).
    pub files: u64,
    /// Sum of regular file sizes after the manifest.
    pub bytes: u64,
    /// The base deploy settings (`[deploy]`).
    pub deploy: DeploySettings,
    /// Per environment (sorted by name), what differs from `deploy` (`[env.<name>.deploy]`);
    /// left out when no environment overrides anything.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, DeployOverrides>,
    /// `env` of a format-1 manifest, read only so deploy records written before format 2
    /// stay readable; never written, and refused in a bundle (format 1 is refused anyway).
    #[serde(rename = "env", default, skip_serializing)]
    pub legacy_env: Option<String>,
}

impl Manifest {
    /// Canonical bytes written into the bundle (stable key order, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses manifest bytes read from a bundle: only [`MANIFEST_FORMAT`], with a message
    /// that says what to do for any other format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        let FormatOnly { format } = serde_json::from_slice(bytes)?;
        match format {
            f if f < MANIFEST_FORMAT => Err(ManifestError::OlderFormat(f)),
            f if f > MANIFEST_FORMAT => Err(ManifestError::NewerFormat(f)),
            _ => {
                let m: Self = serde_json::from_slice(bytes)?;
                if m.legacy_env.is_some() {
                    return Err(ManifestError::Json(serde::de::Error::custom(format!(
                        "unknown field `env`: format {MANIFEST_FORMAT} manifests carry no environment"
                    ))));
                }
                Ok(m)
            }
        }
    }

    /// The effective deploy settings for `env` ([`settings_for`]).
    pub fn settings_for(&self, env: &str) -> Result<DeploySettings, SettingsError> {
        settings_for(&self.deploy, &self.overrides, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        DeploySettings::default().validate().unwrap();
    }

    #[test]
    fn unsafe_settings_are_refused_with_the_field_named() {
        let cases: Vec<(DeploySettings, &str)> = vec![
            (
                DeploySettings {
                    compose_file: "../compose.yaml".into(),
                    ..Default::default()
                },
                "compose_file",
            ),
            (
                DeploySettings {
                    compose_file: "/etc/compose.yaml".into(),
                    ..Default::default()
                },
                "compose_file",
            ),
            (
                DeploySettings {
                    shared_paths: vec!["data/../../etc".into()],
                    ..Default::default()
                },
                "shared_paths",
            ),
            (
                DeploySettings {
                    required_env: vec!["A B".into()],
                    ..Default::default()
                },
                "required_env",
            ),
            (
                DeploySettings {
                    profiles: vec!["$(x)".into()],
                    ..Default::default()
                },
                "profiles",
            ),
            (
                DeploySettings {
                    health_url: Some("file:///etc/passwd".into()),
                    ..Default::default()
                },
                "health_url",
            ),
            (
                DeploySettings {
                    keep_releases: 1,
                    ..Default::default()
                },
                "keep_releases",
            ),
            (
                DeploySettings {
                    health_timeout_secs: 0,
                    ..Default::default()
                },
                "health_timeout_secs",
            ),
            (
                DeploySettings {
                    pre_switch_hook: Some("x/../../y".into()),
                    ..Default::default()
                },
                "pre_switch_hook",
            ),
        ];
        for (settings, field) in cases {
            let err = settings.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field));
        }
    }

    /// `settings` with one field changed by `f`.
    fn with(f: impl FnOnce(&mut DeploySettings)) -> DeploySettings {
        let mut s = DeploySettings::default();
        f(&mut s);
        s
    }

    /// Accepted at the bound, refused one past it, with the field named.
    fn at_and_past(field: &str, at: DeploySettings, past: DeploySettings) {
        at.validate()
            .unwrap_or_else(|e| panic!("{field} at its bound was refused: {e}"));
        let err = past.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn every_bound_is_accepted_at_and_refused_past() {
        use bounds::*;
        let path = |n: usize| format!("{}{}", "d/".repeat((n - 1) / 2), "x".repeat(2 - n % 2));
        assert_eq!(path(MAX_PATH_LEN).len(), MAX_PATH_LEN);
        assert_eq!(path(MAX_PATH_LEN + 1).len(), MAX_PATH_LEN + 1);
        at_and_past(
            "compose_file",
            with(|s| s.compose_file = path(MAX_PATH_LEN)),
            with(|s| s.compose_file = path(MAX_PATH_LEN + 1)),
        );
        at_and_past(
            "pre_switch_hook",
            with(|s| s.pre_switch_hook = Some(path(MAX_PATH_LEN))),
            with(|s| s.pre_switch_hook = Some(path(MAX_PATH_LEN + 1))),
        );
        at_and_past(
            "shared_paths",
            with(|s| s.shared_paths = vec![format!("s{}", path(MAX_PATH_LEN - 1))]),
            with(|s| s.shared_paths = vec![format!("s{}", path(MAX_PATH_LEN))]),
        );
        let names = |n: usize| (0..n).map(|i| format!("p{i}")).collect::<Vec<_>>();
        at_and_past(
            "shared_paths",
            with(|s| s.shared_paths = names(MAX_SHARED_PATHS)),
            with(|s| s.shared_paths = names(MAX_SHARED_PATHS + 1)),
        );
        at_and_past(
            "profiles",
            with(|s| s.profiles = vec!["p".repeat(MAX_PROFILE_LEN)]),
            with(|s| s.profiles = vec!["p".repeat(MAX_PROFILE_LEN + 1)]),
        );
        at_and_past(
            "profiles",
            with(|s| s.profiles = names(MAX_PROFILES)),
            with(|s| s.profiles = names(MAX_PROFILES + 1)),
        );
        let url = |n: usize| format!("http://h/{}", "a".repeat(n - 9));
        at_and_past(
            "health_url",
            with(|s| s.health_url = Some(url(MAX_HEALTH_URL_LEN))),
            with(|s| s.health_url = Some(url(MAX_HEALTH_URL_LEN + 1))),
        );
        for (at, past) in [(1, 0), (3600, 3601)] {
            at_and_past(
                "health_timeout_secs",
                with(|s| s.health_timeout_secs = at),
                with(|s| s.health_timeout_secs = past),
            );
        }
        for (at, past) in [(2, 1), (100, 101)] {
            at_and_past(
                "keep_releases",
                with(|s| s.keep_releases = at),
                with(|s| s.keep_releases = past),
            );
        }
        let rules = |n: usize| (0..n).map(|i| EnvRule::named(&format!("V{i}"))).collect();
        at_and_past(
            "required_env",
            with(|s| s.required_env = rules(MAX_ENV_RULES)),
            with(|s| s.required_env = rules(MAX_ENV_RULES + 1)),
        );
        at_and_past(
            "required_env",
            with(|s| s.required_env = vec![EnvRule::named(&"V".repeat(MAX_ENV_NAME_LEN))]),
            with(|s| s.required_env = vec![EnvRule::named(&"V".repeat(MAX_ENV_NAME_LEN + 1))]),
        );
        let min = |n| EnvRule {
            min_length: n,
            ..EnvRule::named("K")
        };
        at_and_past(
            "required_env",
            with(|s| s.required_env = vec![min(MAX_ENV_MIN_LENGTH)]),
            with(|s| s.required_env = vec![min(MAX_ENV_MIN_LENGTH + 1)]),
        );
        let pat = |p: String| EnvRule {
            pattern: Some(p),
            ..EnvRule::named("K")
        };
        at_and_past(
            "required_env",
            with(|s| s.required_env = vec![pat("a".repeat(MAX_ENV_PATTERN_LEN))]),
            with(|s| s.required_env = vec![pat("a".repeat(MAX_ENV_PATTERN_LEN + 1))]),
        );
        at_and_past(
            "required_env",
            with(|s| s.required_env = vec![pat(format!("a{{{MAX_PATTERN_REPEAT}}}"))]),
            with(|s| s.required_env = vec![pat(format!("a{{{}}}", MAX_PATTERN_REPEAT + 1))]),
        );
    }

    #[test]
    fn names_the_host_refused_before_are_one_rule_now() {
        // A leading '-' in a shared path, and .dropship anywhere, are decided the same way
        // on both sides.
        with(|s| s.shared_paths = vec!["-data".into()])
            .validate()
            .unwrap();
        for p in [".dropship", ".dropship/x"] {
            let err = with(|s| s.shared_paths = vec![p.into()])
                .validate()
                .unwrap_err();
            assert_eq!(err.field, "shared_paths");
            let err = with(|s| s.compose_file = p.into()).validate().unwrap_err();
            assert_eq!(err.field, "compose_file");
        }
        with(|s| s.shared_paths = vec![".dropshipx".into()])
            .validate()
            .unwrap();
    }

    #[test]
    fn overlapping_or_repeated_shared_paths_are_refused() {
        for paths in [
            ["data", "data/uploads"],
            ["data/uploads", "data"],
            ["data", "data"],
        ] {
            let err = with(|s| s.shared_paths = paths.map(String::from).to_vec())
                .validate()
                .unwrap_err();
            assert_eq!(err.field, "shared_paths");
            assert!(err.to_string().contains("overlaps"), "{err}");
        }
        with(|s| {
            s.shared_paths = vec![
                "data".into(),
                "data2".into(),
                "logs/a".into(),
                "logs/b".into(),
            ]
        })
        .validate()
        .unwrap();
        // The compose file and the hook never come from shared/.
        for shared in ["compose.yaml", "deploy"] {
            let err = with(|s| {
                s.shared_paths = vec![shared.into()];
                s.pre_switch_hook = Some("deploy/migrate.sh".into());
            })
            .validate()
            .unwrap_err();
            assert_eq!(err.field, "shared_paths", "{err}");
        }
    }

    #[test]
    fn env_rules_read_plain_names_and_tables_and_write_names_back_as_names() {
        let s: DeploySettings = serde_json::from_str(
            r#"{"required_env": ["DB_URL", {"name": "SECRET_KEY", "min_length": 32},
                {"name": "MODE", "non_empty": true, "pattern": "a|b"}, {"name": "X", "non_empty": true}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.required_env,
            vec![
                EnvRule::named("DB_URL"),
                EnvRule {
                    min_length: 32,
                    ..EnvRule::named("SECRET_KEY")
                },
                EnvRule {
                    min_length: 1,
                    pattern: Some("a|b".into()),
                    ..EnvRule::named("MODE")
                },
                EnvRule {
                    min_length: 1,
                    ..EnvRule::named("X")
                },
            ]
        );
        s.validate().unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["required_env"][0], "DB_URL");
        assert_eq!(
            json["required_env"][1],
            serde_json::json!({"name": "SECRET_KEY", "min_length": 32})
        );
        let back: DeploySettings = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
        // A plain config serialises exactly as before rules existed.
        let plain = with(|s| s.required_env = vec!["A".into(), "B".into()]);
        assert!(String::from_utf8(serde_json::to_vec(&plain).unwrap())
            .unwrap()
            .contains(r#""required_env":["A","B"]"#));
        let err = serde_json::from_str::<DeploySettings>(
            r#"{"required_env": [{"name": "A", "min_len": 3}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("min_len"), "{err}");
    }

    #[test]
    fn patterns_in_the_supported_subset_are_accepted_others_refused() {
        for ok in [
            "[A-Za-z0-9]{32,}",
            "^(dev|prod)$",
            "postgres://.+",
            "[[:xdigit:]]{64}",
            "[^ ]+",
            "[]a-]*",
            "a\\.b\\$",
            "(a|b)(c|d)?x+",
            "https?://[a-z.]+(:[0-9]{2,5})?/.*",
        ] {
            check_pattern(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            "",
            "(",
            ")",
            "a)",
            "()",
            "a||b",
            "|a",
            "*a",
            "a**",
            "a{2}{3}",
            "a{3,2}",
            "a{256}",
            "a{x}",
            "[a",
            "[[:word:]]",
            "[[.a.]]",
            "[z-a]",
            "a^b",
            "a$b",
            "\\d",
            "\\<a",
            "é",
            "a	b",
            "}",
            "]",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad:?} was accepted");
        }
    }

    /// Every pattern the contract accepts compiles in bash's `[[ =~ ]]` (glibc regcomp),
    /// which is how the host applies it.
    #[test]
    fn accepted_patterns_compile_on_the_host() {
        let patterns = [
            "[A-Za-z0-9]{32,}",
            "^(dev|prod)$",
            "[]a-]*",
            "a\\.b\\$",
            "[[:xdigit:]]{64}",
            "x{0,255}",
            "(a|(b|c)+)?",
            "[^]]",
            "a\\{1\\}",
            "a\\(",
            "[\\]",
        ];
        for p in patterns {
            check_pattern(p).unwrap_or_else(|e| panic!("{p:?}: {e}"));
            let st = std::process::Command::new("bash")
                .args(["-c", "LC_ALL=C; [[ x =~ ^($1)$ ]]; (( $? != 2 ))", "-", p])
                .status()
                .unwrap();
            assert!(st.success(), "bash refused {p:?}");
        }
    }

    fn manifest() -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            app: "shop".into(),
            branch: "main".into(),
            commit: "f".repeat(40),
            commit_time: 1_700_000_000,
            dirty: false,
            message: "init".into(),
            files: 3,
            bytes: 42,
            deploy: DeploySettings::default(),
            overrides: BTreeMap::new(),
            legacy_env: None,
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_unknown_fields() {
        let mut m = manifest();
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        // No environment in the bytes, and no empty overrides table.
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(
            !text.contains("\"env\"") && !text.contains("overrides"),
            "{text}"
        );
        m.overrides.insert(
            "production".into(),
            DeployOverrides {
                profiles: Some(vec!["prod".into()]),
                ..Default::default()
            },
        );
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(Manifest::from_bytes(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v["overrides"]["production"]["profile"] = serde_json::json!(["x"]);
        let err = Manifest::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("profile"), "{err}");
        // A format-2 manifest naming an environment is not a format-2 manifest.
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v["env"] = serde_json::json!("prod");
        let err = Manifest::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("env"), "{err}");
    }

    #[test]
    fn older_and_newer_formats_are_refused_saying_what_to_do() {
        let mut v: serde_json::Value = serde_json::from_slice(&manifest().to_bytes()).unwrap();
        v["format"] = serde_json::json!(1);
        v["env"] = serde_json::json!("prod");
        let err = Manifest::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::OlderFormat(1)), "{err}");
        assert!(err.to_string().contains("rebuild"), "{err}");
        v["format"] = serde_json::json!(3);
        let err = Manifest::from_bytes(v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("upgrade the deployer"), "{err}");
    }

    /// Deploy records written before format 2 hold format-1 manifests; they still parse
    /// through serde (records are read with `serde_json`, not [`Manifest::from_bytes`]).
    #[test]
    fn format_one_manifests_in_old_records_still_parse() {
        let mut v: serde_json::Value = serde_json::from_slice(&manifest().to_bytes()).unwrap();
        v["format"] = serde_json::json!(1);
        v["env"] = serde_json::json!("prod");
        let m: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(m.legacy_env.as_deref(), Some("prod"));
        assert_eq!(m.settings_for("prod").unwrap(), DeploySettings::default());
    }

    #[test]
    fn each_environment_gets_the_base_with_its_own_override_applied() {
        let base = DeploySettings {
            profiles: vec!["web".into()],
            health_url: Some("http://127.0.0.1:8080/health".into()),
            ..Default::default()
        };
        let overrides = BTreeMap::from([(
            "production".to_string(),
            DeployOverrides {
                profiles: Some(vec!["web".into(), "prod".into()]),
                keep_releases: Some(10),
                on_failure: Some(OnFailure::Leave),
                ..Default::default()
            },
        )]);
        assert_eq!(settings_for(&base, &overrides, "staging").unwrap(), base);
        let prod = settings_for(&base, &overrides, "production").unwrap();
        assert_eq!(prod.profiles, ["web", "prod"]);
        assert_eq!(prod.keep_releases, 10);
        assert_eq!(prod.on_failure, OnFailure::Leave);
        // Untouched fields keep the base.
        assert_eq!(prod.health_url, base.health_url);
        assert_eq!(prod.compose_file, base.compose_file);
        // The result is validated: an override cannot smuggle in what the base may not hold.
        let bad = BTreeMap::from([(
            "production".to_string(),
            DeployOverrides {
                compose_file: Some("../x.yaml".into()),
                ..Default::default()
            },
        )]);
        assert_eq!(
            settings_for(&base, &bad, "production").unwrap_err().field,
            "compose_file"
        );
        settings_for(&base, &bad, "staging").unwrap();
    }

    fn start_first(f: impl FnOnce(&mut ProxySettings)) -> DeploySettings {
        let mut p = ProxySettings {
            service: "web".into(),
            port: 8000,
            listen: "127.0.0.1:8080".into(),
            health_path: "/up".into(),
            drain_timeout_secs: 30,
            image: DEFAULT_PROXY_IMAGE.into(),
        };
        f(&mut p);
        with(|s| {
            s.strategy = Strategy::StartFirst;
            s.proxy = Some(p);
        })
    }

    #[test]
    fn start_first_needs_a_proxy_and_recreate_refuses_one() {
        start_first(|_| {}).validate().unwrap();
        let err = with(|s| s.strategy = Strategy::StartFirst)
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "strategy");
        assert!(err.expected.contains("[deploy.proxy]"), "{err}");
        let mut recreate_with_proxy = start_first(|_| {});
        recreate_with_proxy.strategy = Strategy::Recreate;
        let err = recreate_with_proxy.validate().unwrap_err();
        assert_eq!(err.field, "proxy");
        assert!(err.expected.contains("start-first"), "{err}");
    }

    #[test]
    fn proxy_settings_are_checked_at_and_past_every_bound() {
        use bounds::*;
        let field = |s: DeploySettings| s.validate().err().map(|e| e.field);
        at_and_past(
            "proxy.service",
            start_first(|p| p.service = "s".repeat(MAX_SERVICE_LEN)),
            start_first(|p| p.service = "s".repeat(MAX_SERVICE_LEN + 1)),
        );
        for bad in ["", "-web", "web app", "web;rm", "wéb"] {
            assert_eq!(
                field(start_first(|p| p.service = bad.into())),
                Some("proxy.service"),
                "{bad:?}"
            );
        }
        at_and_past(
            "proxy.port",
            start_first(|p| p.port = 65535),
            start_first(|p| p.port = 65536),
        );
        assert_eq!(field(start_first(|p| p.port = 0)), Some("proxy.port"));
        for ok in [
            "0.0.0.0:80",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "10.0.0.1:1",
        ] {
            start_first(|p| p.listen = ok.into()).validate().unwrap();
        }
        for bad in [
            "8080",
            ":8080",
            "localhost:8080",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.01:80",
            "256.0.0.1:80",
            "127.0.0.1:080",
            "[::1]:8080",
            "127.0.0.1:80 ",
        ] {
            assert_eq!(
                field(start_first(|p| p.listen = bad.into())),
                Some("proxy.listen"),
                "{bad:?}"
            );
        }
        at_and_past(
            "proxy.health_path",
            start_first(|p| p.health_path = format!("/{}", "a".repeat(MAX_HEALTH_PATH_LEN - 1))),
            start_first(|p| p.health_path = format!("/{}", "a".repeat(MAX_HEALTH_PATH_LEN))),
        );
        for bad in ["", "up", "/a b", "/a\n"] {
            assert_eq!(
                field(start_first(|p| p.health_path = bad.into())),
                Some("proxy.health_path"),
                "{bad:?}"
            );
        }
        at_and_past(
            "proxy.drain_timeout_secs",
            start_first(|p| p.drain_timeout_secs = *DRAIN_TIMEOUT_SECS.end()),
            start_first(|p| p.drain_timeout_secs = DRAIN_TIMEOUT_SECS.end() + 1),
        );
        start_first(|p| p.drain_timeout_secs = 0)
            .validate()
            .unwrap();
        at_and_past(
            "proxy.image",
            start_first(|p| p.image = format!("i{}", "m".repeat(MAX_IMAGE_LEN - 1))),
            start_first(|p| p.image = format!("i{}", "m".repeat(MAX_IMAGE_LEN))),
        );
        for bad in ["", "-caddy", "caddy 2", "caddy;x", "caddy$x"] {
            assert_eq!(
                field(start_first(|p| p.image = bad.into())),
                Some("proxy.image"),
                "{bad:?}"
            );
        }
        start_first(|p| p.image = "registry.example.com:5000/edge/caddy:2.11@sha256:ab".into())
            .validate()
            .unwrap();
    }

    #[test]
    fn strategy_reads_from_toml_with_defaults_and_keeps_old_manifest_bytes() {
        let s: DeploySettings = toml::from_str(
            "strategy = \"start-first\"\n[proxy]\nservice = \"web\"\nport = 8000\nlisten = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
        assert_eq!(s.strategy, Strategy::StartFirst);
        let p = s.proxy.as_ref().unwrap();
        assert_eq!(
            (
                p.health_path.as_str(),
                p.drain_timeout_secs,
                p.image.as_str()
            ),
            ("/", 30, DEFAULT_PROXY_IMAGE)
        );
        s.validate().unwrap();
        let err = toml::from_str::<DeploySettings>("strategy = \"blue-green\"\n").unwrap_err();
        assert!(err.to_string().contains("blue-green"), "{err}");
        let err = toml::from_str::<DeploySettings>(
            "[proxy]\nservice = \"web\"\nport = 8000\nlisten = \"127.0.0.1:8080\"\ndrain = 3\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("drain"), "{err}");
        // The default strategy and no proxy are not written: older manifests keep their bytes.
        let json = serde_json::to_string(&DeploySettings::default()).unwrap();
        assert!(
            !json.contains("strategy") && !json.contains("proxy"),
            "{json}"
        );
    }

    #[test]
    fn an_environment_may_switch_strategy_either_way() {
        let base = start_first(|_| {});
        let overrides = BTreeMap::from([
            (
                "dev".to_string(),
                DeployOverrides {
                    strategy: Some(Strategy::Recreate),
                    ..Default::default()
                },
            ),
            (
                "production".to_string(),
                DeployOverrides {
                    proxy: Some(ProxySettings {
                        listen: "0.0.0.0:80".into(),
                        ..base.proxy.clone().unwrap()
                    }),
                    ..Default::default()
                },
            ),
        ]);
        let dev = settings_for(&base, &overrides, "dev").unwrap();
        assert_eq!((dev.strategy, dev.proxy), (Strategy::Recreate, None));
        let prod = settings_for(&base, &overrides, "production").unwrap();
        assert_eq!(prod.proxy.unwrap().listen, "0.0.0.0:80");
        assert_eq!(settings_for(&base, &overrides, "staging").unwrap(), base);
    }

    #[test]
    fn the_switch_budget_adds_both_gates_and_the_drain() {
        let s = start_first(|p| p.drain_timeout_secs = 100);
        // gate = 2 * 60 + 30 = 150, twice (the new release and a rollback), the drain, 15.
        assert_eq!(switch_budget_secs(&s), 150 * 2 + 100 + 15);
        assert_eq!(switch_budget_secs(&DeploySettings::default()), 150 * 2 + 15);
    }
}
