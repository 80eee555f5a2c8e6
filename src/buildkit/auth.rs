//! Registry credentials from a Docker config JSON (a `kubernetes.io/dockerconfigjson`
//! Secret's `.dockerconfigjson`), answered to BuildKit by the session's Auth service.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use serde::Deserialize;

use super::Error;

/// One registry's credentials. `Debug` prints no secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// User name; empty with an identity token.
    pub username: String,
    /// Password, or the identity (refresh) token when `username` is empty.
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Registry host → credentials, parsed from Docker config JSON.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    by_host: HashMap<String, Credentials>,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<&String> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("RegistryAuth").field("hosts", &hosts).finish()
    }
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default, alias = "identityToken")]
    identitytoken: Option<String>,
}

/// Docker Hub's names, all mapped to one key.
const DOCKER_HUB: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// `https://index.docker.io/v1/` → `docker.io`; `https://Reg:5000/path` → `reg:5000`.
pub(crate) fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = h
        .strip_prefix("https://")
        .or_else(|| h.strip_prefix("http://"))
        .unwrap_or(h);
    let h = h.split('/').next().unwrap_or(h).to_ascii_lowercase();
    if DOCKER_HUB.contains(&h.as_str()) {
        "docker.io".to_string()
    } else {
        h
    }
}

impl RegistryAuth {
    /// Parses Docker config JSON: `{"auths": {"host": {"auth": "base64(user:pass)"}}}`,
    /// also with `username`/`password`/`identitytoken` fields, or the legacy
    /// `.dockercfg` form without the `auths` wrapper.
    pub fn from_docker_config(json: &[u8]) -> Result<Self, Error> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
            Error::InvalidRequest(format!(
                "registry auth is not valid Docker config JSON ({e}); expected {{\"auths\": {{\"registry\": {{\"auth\": \"…\"}}}}}}"
            ))
        })?;
        let auths = match value.get("auths") {
            Some(a) => a.clone(),
            None => value,
        };
        let entries: HashMap<String, AuthEntry> = serde_json::from_value(auths).map_err(|e| {
            Error::InvalidRequest(format!(
                "registry auth: the \"auths\" map of the Docker config JSON is malformed ({e})"
            ))
        })?;
        let mut by_host = HashMap::new();
        for (host, entry) in entries {
            let creds = entry_credentials(&host, entry)?;
            by_host.insert(normalize_host(&host), creds);
        }
        Ok(RegistryAuth { by_host })
    }

    /// Credentials for a registry host as BuildKit asks for it
    /// (`registry-1.docker.io`, `ghcr.io`, `localhost:5000`).
    pub fn credentials(&self, host: &str) -> Option<&Credentials> {
        self.by_host.get(&normalize_host(host))
    }

    /// Every secret string in here (for masking).
    pub(crate) fn secrets(&self) -> impl Iterator<Item = &str> {
        self.by_host.values().map(|c| c.secret.as_str())
    }
}

fn entry_credentials(host: &str, entry: AuthEntry) -> Result<Credentials, Error> {
    if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
        return Ok(Credentials {
            username: String::new(),
            secret: token,
        });
    }
    if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| {
                Error::InvalidRequest(format!(
                    "registry auth for {host:?}: \"auth\" is not base64 of user:password"
                ))
            })?;
        let text = String::from_utf8(decoded).map_err(|_| {
            Error::InvalidRequest(format!(
                "registry auth for {host:?}: \"auth\" does not decode to UTF-8 user:password"
            ))
        })?;
        let (user, pass) = text.split_once(':').ok_or_else(|| {
            Error::InvalidRequest(format!(
                "registry auth for {host:?}: \"auth\" must decode to user:password"
            ))
        })?;
        return Ok(Credentials {
            username: user.to_string(),
            secret: pass.to_string(),
        });
    }
    Ok(Credentials {
        username: entry.username.unwrap_or_default(),
        secret: entry.password.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auth_and_matches_hosts() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},
            "ghcr.io":{"username":"bot","password":"tok"},
            "localhost:5000":{"identitytoken":"idt"}
        }}"#;
        let a = RegistryAuth::from_docker_config(json).unwrap();
        let hub = a.credentials("registry-1.docker.io").unwrap();
        assert_eq!((hub.username.as_str(), hub.secret.as_str()), ("user", "pass"));
        assert_eq!(a.credentials("GHCR.io").unwrap().secret, "tok");
        let l = a.credentials("localhost:5000").unwrap();
        assert_eq!((l.username.as_str(), l.secret.as_str()), ("", "idt"));
        assert!(a.credentials("quay.io").is_none());
        assert!(!format!("{a:?}").contains("pass"));
        assert!(!format!("{hub:?}").contains("pass"));
    }

    #[test]
    fn legacy_dockercfg_and_errors() {
        let a = RegistryAuth::from_docker_config(br#"{"quay.io":{"auth":"YTpi"}}"#).unwrap();
        assert_eq!(a.credentials("quay.io").unwrap().username, "a");
        assert!(RegistryAuth::from_docker_config(b"not json").is_err());
        assert!(RegistryAuth::from_docker_config(br#"{"auths":{"x":{"auth":"!!"}}}"#).is_err());
    }
}
