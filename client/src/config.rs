//! Settings: which graphfeed API, which Entra authority, tenant and app, which Graph. Each setting
//! is taken from its flag, else its environment variable, else `config.json` in graphfeed's
//! configuration directory, else a default that points at `make local` (graph-sim's default
//! public client and API app), and remembers where it came from (`graphfeed configure --show`).
//!
//! Values are checked once, here, so a command never starts with a URL that is not one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secure_file;

/// Names the directory whose `graphfeed/` subdirectory holds config.json, tokens.json and
/// uploads/, instead of the platform's configuration directory (`~/.config` on Linux).
pub const CONFIG_DIR_ENV: &str = "GRAPHFEED_CONFIG_DIR";

/// How the environment is read: `std::env::var` in the binary, a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    ApiUrl,
    Authority,
    Tenant,
    ClientId,
    ApiScope,
    GraphUrl,
}

impl Key {
    pub const ALL: [Self; 6] = [
        Self::ApiUrl,
        Self::Authority,
        Self::Tenant,
        Self::ClientId,
        Self::ApiScope,
        Self::GraphUrl,
    ];

    /// The name in config.json and in `configure --show`.
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiUrl => "api_url",
            Self::Authority => "authority",
            Self::Tenant => "tenant",
            Self::ClientId => "client_id",
            Self::ApiScope => "api_scope",
            Self::GraphUrl => "graph_url",
        }
    }

    pub fn env(self) -> &'static str {
        match self {
            Self::ApiUrl => "GRAPHFEED_API_URL",
            Self::Authority => "ENTRA_AUTHORITY_HOST",
            Self::Tenant => "GRAPHFEED_TENANT",
            Self::ClientId => "GRAPHFEED_CLIENT_ID",
            Self::ApiScope => "GRAPHFEED_API_SCOPE",
            Self::GraphUrl => "GRAPH_BASE_URL",
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Self::ApiUrl => "--api-url",
            Self::Authority => "--authority",
            Self::Tenant => "--tenant",
            Self::ClientId => "--client-id",
            Self::ApiScope => "--api-scope",
            Self::GraphUrl => "--graph-url",
        }
    }

    /// `make local`: graphfeed on 3000, graph-sim (Entra and Graph) on 3001, graph-sim's default
    /// public client app and API app (`dev/graph-sim/src/entra/mod.rs`).
    pub fn default_value(self) -> &'static str {
        match self {
            Self::ApiUrl => "http://127.0.0.1:3000",
            Self::Authority => "http://127.0.0.1:3001",
            Self::Tenant => "organizations",
            Self::ClientId => "5e7a1c2d-3b4f-4a6e-9d8c-67f00dfeed02",
            Self::ApiScope => "api://5e7a1c2d-3b4f-4a6e-9d8c-67f00dfeed01/access_as_user",
            Self::GraphUrl => "http://127.0.0.1:3001/v1.0",
        }
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => write!(f, "flag {flag}"),
            Self::Env(name) => write!(f, "environment {name}"),
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Why the settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting} from {origin} is not valid: {reason} (got '{value}')")]
    Invalid {
        setting: &'static str,
        origin: Origin,
        value: String,
        reason: &'static str,
    },
    #[error("cannot read the config file {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("cannot write the config file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no configuration directory: set {CONFIG_DIR_ENV} (or HOME)")]
    NoConfigDir,
}

/// Some settings, as a flag set or config.json holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_url: Option<String>,
}

impl PartialSettings {
    pub fn get(&self, key: Key) -> Option<&str> {
        self.slot(key).as_deref()
    }

    pub fn set(&mut self, key: Key, value: Option<String>) {
        *self.slot_mut(key) = value;
    }

    pub fn is_empty(&self) -> bool {
        Key::ALL.iter().all(|key| self.get(*key).is_none())
    }

    fn slot(&self, key: Key) -> &Option<String> {
        match key {
            Key::ApiUrl => &self.api_url,
            Key::Authority => &self.authority,
            Key::Tenant => &self.tenant,
            Key::ClientId => &self.client_id,
            Key::ApiScope => &self.api_scope,
            Key::GraphUrl => &self.graph_url,
        }
    }

    fn slot_mut(&mut self, key: Key) -> &mut Option<String> {
        match key {
            Key::ApiUrl => &mut self.api_url,
            Key::Authority => &mut self.authority,
            Key::Tenant => &mut self.tenant,
            Key::ClientId => &mut self.client_id,
            Key::ApiScope => &mut self.api_scope,
            Key::GraphUrl => &mut self.graph_url,
        }
    }
}

/// An absolute http(s) URL without a trailing slash, query or fragment: a base to append paths to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    text: String,
    url: url::Url,
}

impl BaseUrl {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let trimmed = raw.trim().trim_end_matches('/');
        let url = url::Url::parse(trimmed).map_err(|_| "not a URL")?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("not an http(s) URL");
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("a base URL takes no query or fragment");
        }
        Ok(Self {
            text: trimmed.to_owned(),
            url,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `{base}{path}`; `path` starts with `/`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.text)
    }

    /// The base as a [`url::Url`], to add encoded path segments to.
    pub fn url(&self) -> url::Url {
        self.url.clone()
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The effective settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api_url: BaseUrl,
    pub authority: BaseUrl,
    pub tenant: String,
    pub client_id: String,
    pub api_scope: String,
    pub graph_url: BaseUrl,
    values: BTreeMap<Key, (String, Origin)>,
}

impl Settings {
    /// Each setting's value and where it came from, in [`Key::ALL`] order.
    pub fn described(&self) -> Vec<(Key, &str, &Origin)> {
        self.values
            .iter()
            .map(|(key, (value, origin))| (*key, value.as_str(), origin))
            .collect()
    }

    pub fn origin(&self, key: Key) -> Option<&Origin> {
        self.values.get(&key).map(|(_, origin)| origin)
    }
}

/// graphfeed's own directory and the files in it.
#[derive(Debug, Clone)]
pub struct Paths {
    pub dir: PathBuf,
}

impl Paths {
    /// `$GRAPHFEED_CONFIG_DIR/graphfeed`, else the platform's configuration directory +
    /// `graphfeed` (`~/.config/graphfeed` on Linux).
    pub fn resolve(env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let base = match env(CONFIG_DIR_ENV).filter(|v| !v.trim().is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => dirs::config_dir().ok_or(ConfigError::NoConfigDir)?,
        };
        Ok(Self {
            dir: base.join("graphfeed"),
        })
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn token_cache(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.dir.join("uploads")
    }
}

/// config.json, or nothing when there is none.
pub fn load_file(path: &Path) -> Result<PartialSettings, ConfigError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PartialSettings::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.to_owned(),
                detail: e.to_string(),
            });
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Adds `changes` to config.json (each checked first), keeping what it held.
pub fn save_file(path: &Path, changes: &PartialSettings) -> Result<PartialSettings, ConfigError> {
    let mut checked = Vec::new();
    for key in Key::ALL {
        if let Some(value) = changes.get(key) {
            checked.push((key, check(key, value, Origin::Flag(key.flag()))?));
        }
    }
    let mut saved = load_file(path)?;
    for (key, value) in checked {
        saved.set(key, Some(value));
    }
    let mut json = serde_json::to_vec_pretty(&saved).map_err(|e| ConfigError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    secure_file::write_private(path, &json).map_err(|source| ConfigError::Write {
        path: path.to_owned(),
        source,
    })?;
    Ok(saved)
}

/// The effective settings: flag > environment > config file > default, each value checked.
pub fn resolve(
    flags: &PartialSettings,
    env: EnvLookup<'_>,
    file: &PartialSettings,
    file_path: &Path,
) -> Result<Settings, ConfigError> {
    let mut values = BTreeMap::new();
    for key in Key::ALL {
        let (value, origin) = if let Some(value) = flags.get(key) {
            (value.to_owned(), Origin::Flag(key.flag()))
        } else if let Some(value) = env(key.env()).filter(|v| !v.trim().is_empty()) {
            (value, Origin::Env(key.env()))
        } else if let Some(value) = file.get(key) {
            (value.to_owned(), Origin::File(file_path.to_owned()))
        } else {
            (key.default_value().to_owned(), Origin::Default)
        };
        let value = check(key, &value, origin.clone())?;
        values.insert(key, (value, origin));
    }
    let text = |key: Key| values.get(&key).map(|(v, _)| v.clone()).unwrap_or_default();
    let url = |key: Key| {
        let value = text(key);
        BaseUrl::parse(&value).map_err(|reason| ConfigError::Invalid {
            setting: key.name(),
            origin: values
                .get(&key)
                .map_or(Origin::Default, |(_, origin)| origin.clone()),
            value,
            reason,
        })
    };
    Ok(Settings {
        api_url: url(Key::ApiUrl)?,
        authority: url(Key::Authority)?,
        tenant: text(Key::Tenant),
        client_id: text(Key::ClientId),
        api_scope: text(Key::ApiScope),
        graph_url: url(Key::GraphUrl)?,
        values,
    })
}

/// The value, normalised (trimmed; URLs without a trailing slash), or why it cannot be used.
fn check(key: Key, raw: &str, origin: Origin) -> Result<String, ConfigError> {
    let value = raw.trim();
    let invalid = |reason: &'static str| ConfigError::Invalid {
        setting: key.name(),
        origin: origin.clone(),
        value: raw.to_owned(),
        reason,
    };
    match key {
        Key::ApiUrl | Key::Authority | Key::GraphUrl => BaseUrl::parse(value)
            .map(|url| url.as_str().to_owned())
            .map_err(invalid),
        Key::Tenant => {
            let ok = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if ok {
                Ok(value.to_owned())
            } else {
                Err(invalid(
                    "a tenant is a GUID, a domain, `organizations`, `common` or `consumers`",
                ))
            }
        }
        Key::ClientId => {
            if !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '/') {
                Ok(value.to_owned())
            } else {
                Err(invalid(
                    "a client id is the app's application (client) id, a GUID",
                ))
            }
        }
        Key::ApiScope => {
            if !value.is_empty() && !value.contains(char::is_whitespace) {
                Ok(value.to_owned())
            } else {
                Err(invalid(
                    "the API scope is one scope: graphfeed API's App ID URI + `/access_as_user`",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn partial(key: Key, value: &str) -> PartialSettings {
        let mut settings = PartialSettings::default();
        settings.set(key, Some(value.to_owned()));
        settings
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
        let file_path = Path::new("/cfg/graphfeed/config.json");
        let file = PartialSettings {
            api_url: Some("http://file.example".into()),
            authority: Some("http://file-authority.example".into()),
            tenant: Some("file-tenant".into()),
            ..Default::default()
        };
        let env = env_of(&[
            ("GRAPHFEED_API_URL", "http://env.example"),
            ("ENTRA_AUTHORITY_HOST", "http://env-authority.example/"),
        ]);
        let flags = partial(Key::ApiUrl, "http://flag.example");

        let settings = resolve(&flags, &env, &file, file_path).unwrap();

        assert_eq!(settings.api_url.as_str(), "http://flag.example");
        assert_eq!(settings.origin(Key::ApiUrl), Some(&Origin::Flag("--api-url")));
        assert_eq!(settings.authority.as_str(), "http://env-authority.example");
        assert_eq!(
            settings.origin(Key::Authority),
            Some(&Origin::Env("ENTRA_AUTHORITY_HOST"))
        );
        assert_eq!(settings.tenant, "file-tenant");
        assert_eq!(
            settings.origin(Key::Tenant),
            Some(&Origin::File(file_path.to_owned()))
        );
        assert_eq!(settings.graph_url.as_str(), "http://127.0.0.1:3001/v1.0");
        assert_eq!(settings.origin(Key::GraphUrl), Some(&Origin::Default));
    }

    #[test]
    fn an_empty_environment_variable_counts_as_unset() {
        let env = env_of(&[("GRAPHFEED_TENANT", "  ")]);
        let file = partial(Key::Tenant, "contoso.onmicrosoft.com");
        let settings = resolve(&PartialSettings::default(), &env, &file, Path::new("c.json")).unwrap();
        assert_eq!(settings.tenant, "contoso.onmicrosoft.com");
    }

    #[test]
    fn the_defaults_point_at_make_local_and_graph_sims_default_apps() {
        let settings = resolve(
            &PartialSettings::default(),
            &env_of(&[]),
            &PartialSettings::default(),
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(settings.api_url.as_str(), "http://127.0.0.1:3000");
        assert_eq!(settings.authority.as_str(), "http://127.0.0.1:3001");
        assert_eq!(settings.tenant, "organizations");
        assert_eq!(settings.client_id, graph_sim::DEFAULT_CLIENT_APP_ID);
        assert_eq!(
            settings.api_scope,
            format!(
                "{}/{}",
                graph_sim::DEFAULT_APP_ID_URI,
                graph_sim::DEFAULT_API_SCOPE
            )
        );
        assert!(
            settings
                .described()
                .iter()
                .all(|(_, _, o)| **o == Origin::Default)
        );
    }

    #[test]
    fn a_malformed_value_is_refused_naming_the_setting_and_where_it_came_from() {
        let env = env_of(&[("GRAPH_BASE_URL", "ftp://graph")]);
        let error = resolve(
            &PartialSettings::default(),
            &env,
            &PartialSettings::default(),
            Path::new("c.json"),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("graph_url from environment GRAPH_BASE_URL"),
            "{text}"
        );
        assert!(text.contains("ftp://graph"), "{text}");
        let error = resolve(
            &partial(Key::ApiScope, "a b"),
            &env_of(&[]),
            &PartialSettings::default(),
            Path::new("c.json"),
        )
        .unwrap_err();
        assert!(error.to_string().contains("flag --api-scope"), "{error}");
    }

    #[test]
    fn the_config_directory_is_graphfeed_under_graphfeed_config_dir() {
        let env = env_of(&[("GRAPHFEED_CONFIG_DIR", "/tmp/x")]);
        let paths = Paths::resolve(&env).unwrap();
        assert_eq!(paths.token_cache(), Path::new("/tmp/x/graphfeed/tokens.json"));
        assert_eq!(paths.config_file(), Path::new("/tmp/x/graphfeed/config.json"));
        assert_eq!(paths.uploads_dir(), Path::new("/tmp/x/graphfeed/uploads"));
    }

    #[test]
    fn saving_keeps_earlier_settings_and_refuses_a_bad_value() {
        let dir = crate::secure_file::tests::temp_dir("config-save");
        let path = dir.join("graphfeed").join("config.json");
        save_file(&path, &partial(Key::Tenant, "organizations")).unwrap();
        save_file(&path, &partial(Key::ApiUrl, "https://api.example/")).unwrap();
        let saved = load_file(&path).unwrap();
        assert_eq!(saved.tenant.as_deref(), Some("organizations"));
        assert_eq!(
            saved.api_url.as_deref(),
            Some("https://api.example"),
            "normalised"
        );
        assert!(save_file(&path, &partial(Key::Authority, "nope")).is_err());
        assert_eq!(load_file(&path).unwrap(), saved, "nothing written");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn an_unknown_key_in_the_config_file_is_an_error_naming_the_file() {
        let dir = crate::secure_file::tests::temp_dir("config-unknown");
        let path = dir.join("config.json");
        std::fs::write(&path, r#"{"api_ulr":"http://x"}"#).unwrap();
        let error = load_file(&path).unwrap_err().to_string();
        assert!(error.contains("config.json"), "{error}");
        assert!(error.contains("api_ulr"), "{error}");
        std::fs::remove_dir_all(dir).ok();
    }
}
