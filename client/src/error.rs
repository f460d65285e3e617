//! What can go wrong in a command, said so that the user knows what happened and what to do next:
//! every [`Error`] has a message ([`std::fmt::Display`]), a [`Error::hint`] and an
//! [`Error::exit_code`] (2 for usage and configuration, 1 otherwise). No variant carries a token,
//! and none carries an upload URL (it is pre-authorised: whoever has it can write the file).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A command-line value that cannot work (the parser let it through, the file system did not).
    #[error("{0}")]
    Usage(String),

    #[error("Not signed in: run `graphfeed login`.")]
    NotSignedIn,

    #[error("the token cache {path} cannot be read ({detail})")]
    CorruptTokenCache { path: PathBuf, detail: String },

    #[error("the cached sign-in is for {cached}, not for the configured {configured}")]
    SignedInElsewhere { cached: String, configured: String },

    /// The refresh token was refused: the sign-in expired, was revoked, or needs the user again.
    #[error("your sign-in has expired or was revoked ({detail})")]
    SignInExpired { detail: String },

    #[error("sign-in was declined at the verification page")]
    DeviceCodeDeclined,

    #[error("the sign-in code expired before it was approved")]
    DeviceCodeExpired,

    #[error("the sign-in service does not know this device code ({detail})")]
    DeviceCodeUnknown { detail: String },

    /// Any other refusal of the token or devicecode endpoint.
    #[error("Microsoft Entra refused the request: {error} ({description})")]
    Entra { error: String, description: String },

    /// graphfeed's API answered with an error the user can act on.
    #[error("graphfeed answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },

    /// A service answered 503/429 and kept doing so after the one retry a command makes.
    #[error("{service} is busy: {detail}")]
    Busy {
        service: &'static str,
        detail: String,
        retry_after: Option<Duration>,
    },

    /// Microsoft Graph refused a request.
    #[error("Microsoft Graph answered {status} {code}: {message}")]
    Graph {
        status: u16,
        code: String,
        message: String,
    },

    #[error("{path} already exists in OneDrive; use --conflict replace or --conflict rename")]
    NameConflict { path: String },

    #[error("the folder {folder} does not exist in OneDrive")]
    FolderNotFound { folder: String },

    #[error("OneDrive has no room for {path}: {message}")]
    QuotaExceeded { path: String, message: String },

    #[error("the upload of {path} failed: {reason}")]
    UploadFailed { path: String, reason: String },

    #[error("cannot reach {service} at {url}: {detail}")]
    Unreachable {
        service: &'static str,
        url: String,
        detail: String,
    },

    #[error("{service} sent an answer graphfeed cannot read: {detail}")]
    BadAnswer { service: &'static str, detail: String },

    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

impl Error {
    /// What to do next: one line for the `hint:` that follows the message.
    pub fn hint(&self) -> String {
        match self {
            Self::Config(_) => {
                "fix the flag, environment variable or config.json value named above; `graphfeed configure \
                 --show` shows every setting and where it came from"
                    .to_owned()
            }
            Self::Usage(_) => "see `graphfeed <command> --help`".to_owned(),
            Self::NotSignedIn => {
                "`graphfeed login` shows a code to enter at the sign-in page and caches your tokens"
                    .to_owned()
            }
            Self::CorruptTokenCache { .. } => "run `graphfeed login` to sign in again".to_owned(),
            Self::SignedInElsewhere { .. } => {
                "run `graphfeed login` to sign in with the current settings, or switch the settings back \
                 (`graphfeed configure --show`)"
                    .to_owned()
            }
            Self::SignInExpired { .. } => "run `graphfeed login`".to_owned(),
            Self::DeviceCodeDeclined => {
                "run `graphfeed login` again and approve the code if you meant to sign in".to_owned()
            }
            Self::DeviceCodeExpired => {
                "run `graphfeed login` again and enter the code before it expires".to_owned()
            }
            Self::DeviceCodeUnknown { .. } => "run `graphfeed login` again for a new code".to_owned(),
            Self::Entra { error, .. } => entra_hint(error),
            Self::Api { status, code, .. } => api_hint(*status, code),
            Self::Busy { retry_after, .. } => match retry_after {
                Some(after) => format!("try again in {} s", after.as_secs().max(1)),
                None => "try again in a minute".to_owned(),
            },
            Self::Graph { status, code, .. } => graph_hint(*status, code),
            Self::NameConflict { .. } => {
                "--conflict replace overwrites the file in OneDrive; --conflict rename keeps both (OneDrive \
                 picks a new name)"
                    .to_owned()
            }
            Self::FolderNotFound { .. } => {
                "create the folder in OneDrive first, or choose another with --to".to_owned()
            }
            Self::QuotaExceeded { .. } => "free some space in OneDrive, then run the upload again".to_owned(),
            Self::UploadFailed { .. } => {
                "run the same command again: it resumes where the upload stopped".to_owned()
            }
            Self::Unreachable { service, .. } => match *service {
                "graphfeed's API" => {
                    "is graphfeed running there? `make local` serves it on http://127.0.0.1:3000; set \
                     --api-url or GRAPHFEED_API_URL otherwise"
                        .to_owned()
                }
                "Microsoft Entra" => {
                    "check --authority / ENTRA_AUTHORITY_HOST (`make local` runs graph-sim on \
                     http://127.0.0.1:3001)"
                        .to_owned()
                }
                _ => "check --graph-url / GRAPH_BASE_URL and your network, then try again".to_owned(),
            },
            Self::BadAnswer { .. } => {
                "check that the configured URLs point at graphfeed, Entra and Graph (`graphfeed configure \
                 --show`)"
                    .to_owned()
            }
            Self::File { .. } => "check the path and its permissions".to_owned(),
            Self::Output(_) => "check where the output goes (a closed pipe or a full disk?)".to_owned(),
        }
    }

    /// 2 for usage and configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Whether the output went away (`graphfeed changes | head`): not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Self::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// A transport failure, with the URL left out of reqwest's text (an upload URL is a secret).
    pub(crate) fn unreachable(service: &'static str, url: &str, error: reqwest::Error) -> Self {
        Self::Unreachable {
            service,
            url: url.to_owned(),
            detail: describe(error),
        }
    }

    pub(crate) fn file(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File {
            action,
            path: path.into(),
            source,
        }
    }
}

/// reqwest's description of a failure without the URL, plus its cause (`connection refused`).
pub(crate) fn describe(error: reqwest::Error) -> String {
    use std::error::Error as _;
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// What to do about an error code of graphfeed's API (README "Errors a client can act on").
pub fn api_hint(status: u16, code: &str) -> String {
    match code {
        "interaction_required" => "run `graphfeed login`, then `graphfeed connect`".to_owned(),
        "insufficient_claims" => {
            "sign in again to satisfy multi-factor authentication or Conditional Access: run `graphfeed \
             login`, then `graphfeed connect`"
                .to_owned()
        }
        "invalid_token" => {
            "run `graphfeed login`; if that does not help, check that api_scope is graphfeed's API scope \
             (`graphfeed configure --show`)"
                .to_owned()
        }
        "consent_required" => {
            "grant consent to graphfeed's Microsoft Graph permissions (or ask an administrator to), then run \
             `graphfeed connect`"
                .to_owned()
        }
        "not_connected" => "run `graphfeed connect`".to_owned(),
        "drive_not_found" => {
            "open OneDrive once so that Microsoft provisions it, then run `graphfeed connect`".to_owned()
        }
        "subscription_quota_reached" => {
            "remove other apps' subscriptions on this drive, then run `graphfeed connect`".to_owned()
        }
        "notification_url_unreachable" => {
            "graphfeed's operator must fix its notification URL; run `graphfeed connect` again later"
                .to_owned()
        }
        "disconnected_meanwhile" => {
            "run `graphfeed connect` again if you did not mean to disconnect".to_owned()
        }
        "invalid_request" => "check the command's options (`--help`)".to_owned(),
        "graph_access_denied" => {
            "Microsoft Graph refused graphfeed access to your drive: sign in with an account that has \
             OneDrive (`graphfeed login`), then `graphfeed connect`"
                .to_owned()
        }
        "temporarily_unavailable" => "try again in a minute".to_owned(),
        "route_not_found" => {
            "this graphfeed does not serve that route: check --api-url / GRAPHFEED_API_URL, or update \
             graphfeed's deployment"
                .to_owned()
        }
        _ if status >= 500 => {
            "try again later; if it persists, tell graphfeed's operator (the details are in its logs)"
                .to_owned()
        }
        _ => "check the command and the settings (`graphfeed configure --show`)".to_owned(),
    }
}

/// What to do about a token-endpoint `error` (graph-protocol.md §7.3).
fn entra_hint(error: &str) -> String {
    match error {
        "invalid_client" | "unauthorized_client" => {
            "check client_id: it must be a public client app registered for the device-code flow \
             (`graphfeed configure --client-id …`)"
                .to_owned()
        }
        "invalid_scope" | "invalid_resource" => {
            "check api_scope: it is graphfeed API's App ID URI + `/access_as_user` (`graphfeed configure \
             --api-scope …`)"
                .to_owned()
        }
        "consent_required" => {
            "grant consent to the app (or ask an administrator to), then run `graphfeed login`".to_owned()
        }
        "invalid_request" => {
            "check tenant and client_id (`graphfeed configure --show`); a tenant must be a GUID, \
             `organizations`, `common` or `consumers`"
                .to_owned()
        }
        _ => "run `graphfeed login` again; check the settings with `graphfeed configure --show`".to_owned(),
    }
}

/// What to do about a Graph error.
fn graph_hint(status: u16, code: &str) -> String {
    match (status, code) {
        (401, _) => "run `graphfeed login`".to_owned(),
        (403, _) => "your Graph token may not write files (it needs Files.ReadWrite): run `graphfeed login`"
            .to_owned(),
        (413, _) => "the file or fragment is too large for OneDrive; try a smaller --fragment-mib".to_owned(),
        (s, _) if s >= 500 || s == 429 => {
            "Microsoft Graph is having trouble; run the same command again later".to_owned()
        }
        _ => "check the file and the destination (`--to`), then try again".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interaction_required_says_to_sign_in_again_then_connect() {
        let error = Error::Api {
            status: 401,
            code: "interaction_required".into(),
            message: "Sign in again, then connect again.".into(),
        };
        assert_eq!(error.hint(), "run `graphfeed login`, then `graphfeed connect`");
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn not_connected_says_to_connect() {
        assert_eq!(api_hint(404, "not_connected"), "run `graphfeed connect`");
    }

    #[test]
    fn consent_required_says_to_grant_consent_then_connect() {
        let hint = api_hint(403, "consent_required");
        assert!(hint.contains("consent"), "{hint}");
        assert!(hint.ends_with("`graphfeed connect`"), "{hint}");
    }

    #[test]
    fn busy_says_when_to_try_again() {
        let error = Error::Busy {
            service: "graphfeed",
            detail: "Microsoft Graph is busy; retry later.".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(error.hint(), "try again in 7 s");
    }

    #[test]
    fn not_signed_in_names_the_login_command() {
        assert_eq!(
            Error::NotSignedIn.to_string(),
            "Not signed in: run `graphfeed login`."
        );
    }

    #[test]
    fn a_name_conflict_names_the_path_and_both_ways_out() {
        let error = Error::NameConflict {
            path: "/Documents/a.bin".into(),
        };
        assert_eq!(
            error.to_string(),
            "/Documents/a.bin already exists in OneDrive; use --conflict replace or --conflict rename"
        );
        assert_eq!(error.exit_code(), 1);
    }

    #[test]
    fn configuration_and_usage_mistakes_exit_with_2() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        let config = Error::Config(ConfigError::NoConfigDir);
        assert_eq!(config.exit_code(), 2);
        assert!(config.hint().contains("configure --show"));
    }

    #[test]
    fn an_unknown_server_error_says_to_try_later_and_an_unknown_client_error_to_check_settings() {
        assert!(api_hint(500, "server_error").starts_with("try again later"));
        assert!(api_hint(418, "teapot").contains("configure --show"));
    }
}
