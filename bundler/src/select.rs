//! What may go into a bundle: configured excludes, and refusal of files that look like
//! secrets unless the user names them explicitly.

/// Matches a repository-relative path against a glob: `*` and `?` stay within one path
/// segment, `**` spans segments. A pattern without `/` matches the file name at any depth.
pub fn glob_matches(pattern: &str, path: &str) -> bool {
    if !pattern.contains('/') {
        let name = path.rsplit('/').next().unwrap_or(path);
        return match_bytes(pattern.as_bytes(), name.as_bytes());
    }
    match_bytes(pattern.as_bytes(), path.as_bytes())
        || (pattern.ends_with("/**") && path == &pattern[..pattern.len() - 3])
}

fn match_bytes(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') if p.get(1) == Some(&b'*') => {
            let rest = p[2..].strip_prefix(b"/").unwrap_or(&p[2..]);
            (0..=s.len()).any(|i| {
                (i == 0 || s[i - 1] == b'/' || rest.is_empty()) && match_bytes(rest, &s[i..])
            }) || match_bytes(&p[2..], s)
        }
        Some(b'*') => (0..=s.len())
            .take_while(|&i| i == 0 || s[i - 1] != b'/')
            .any(|i| match_bytes(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && s[0] != b'/' && match_bytes(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && match_bytes(&p[1..], &s[1..]),
    }
}

/// File-name patterns that usually hold credentials. Public keys and example files are fine.
pub const SECRET_PATTERNS: &[&str] = &[
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "*.tfstate",
    "*.tfstate.*",
    "credentials.json",
    "**/.aws/credentials",
    "**/.docker/config.json",
];

/// Names that match a secret pattern but are conventionally safe to commit.
pub const SECRET_EXCEPTIONS: &[&str] = &[".env.example", ".env.sample", ".env.template", "*.pub"];

/// True when `path` looks like it holds a secret.
pub fn looks_like_secret(path: &str) -> bool {
    SECRET_PATTERNS.iter().any(|p| glob_matches(p, path))
        && !SECRET_EXCEPTIONS.iter().any(|p| glob_matches(p, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("*.md", "README.md"));
        assert!(glob_matches("*.md", "docs/a/b.md"));
        assert!(!glob_matches("docs/*.md", "docs/a/b.md"));
        assert!(glob_matches("docs/**", "docs/a/b.md"));
        assert!(glob_matches("docs/**", "docs"));
        assert!(glob_matches("**/test_*.py", "a/b/test_x.py"));
        assert!(glob_matches("**/test_*.py", "test_x.py"));
        assert!(glob_matches("a/?.txt", "a/b.txt"));
        assert!(!glob_matches("a/?.txt", "a/bc.txt"));
        assert!(!glob_matches("docs/**", "docsx/a"));
    }

    #[test]
    fn secrets_by_name() {
        for s in [
            ".env",
            "config/.env.production",
            "certs/server.pem",
            "tls.key",
            "home/id_rsa",
            "id_ed25519",
            ".aws/credentials",
            "infra/terraform.tfstate",
        ] {
            assert!(looks_like_secret(s), "{s}");
        }
        for s in [
            ".env.example",
            "deploy/.env.sample",
            "id_rsa.pub",
            "src/keys.rs",
            "environment.md",
            "monkey.txt",
        ] {
            assert!(!looks_like_secret(s), "{s}");
        }
    }
}
