//! The command line: subcommands, their options and their help.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Key, PartialSettings};
use crate::upload::{Conflict, FragmentSize};

const ABOUT: &str =
    "Use graphfeed from the command line: sign in, connect your OneDrive, upload files, read change events.";

const LONG_ABOUT: &str = "\
Use graphfeed from the command line: sign in, connect your OneDrive, upload files, read change events.

graphfeed watches a user's OneDrive and turns every change into a change event. This client signs
you in with a device code, connects your OneDrive to graphfeed, uploads files (large ones in
resumable upload sessions) and reads the change events graphfeed produced.

Settings come from flags, else environment variables, else config.json in graphfeed's
configuration directory, else defaults that point at `make local` (graphfeed on 127.0.0.1:3000,
graph-sim on 127.0.0.1:3001). GRAPHFEED_CONFIG_DIR replaces the platform's configuration
directory (files go to $GRAPHFEED_CONFIG_DIR/graphfeed/).";

const AFTER_HELP: &str = "\
Example, against `make local`:
  graphfeed login
  graphfeed connect
  graphfeed upload ./video.mp4 --to /Videos
  graphfeed changes --follow";

/// graphfeed's command-line client.
#[derive(Debug, Parser)]
#[command(name = "graphfeed", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub settings: SettingFlags,

    #[command(subcommand)]
    pub command: Command,
}

/// The settings, as flags (they win over the environment and config.json).
#[derive(Debug, Clone, Default, Args)]
#[command(
    next_help_heading = "Settings (override GRAPHFEED_* / ENTRA_AUTHORITY_HOST / GRAPH_BASE_URL and config.json)"
)]
pub struct SettingFlags {
    /// graphfeed's API [env: GRAPHFEED_API_URL] [default: http://127.0.0.1:3000]
    #[arg(long, global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// The Entra authority host [env: ENTRA_AUTHORITY_HOST] [default: http://127.0.0.1:3001]
    #[arg(long, global = true, value_name = "URL")]
    pub authority: Option<String>,
    /// The tenant to sign in through [env: GRAPHFEED_TENANT] [default: organizations]
    #[arg(long, global = true, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// This client's app (a public client) [env: GRAPHFEED_CLIENT_ID] [default: graph-sim's CLI app]
    #[arg(long, global = true, value_name = "ID")]
    pub client_id: Option<String>,
    /// graphfeed API's scope [env: GRAPHFEED_API_SCOPE] [default: graph-sim's API app + /access_as_user]
    #[arg(long, global = true, value_name = "SCOPE")]
    pub api_scope: Option<String>,
    /// Microsoft Graph's base URL [env: GRAPH_BASE_URL] [default: http://127.0.0.1:3001/v1.0]
    #[arg(long, global = true, value_name = "URL")]
    pub graph_url: Option<String>,
}

impl SettingFlags {
    pub fn to_partial(&self) -> PartialSettings {
        let mut partial = PartialSettings::default();
        for (key, value) in [
            (Key::ApiUrl, &self.api_url),
            (Key::Authority, &self.authority),
            (Key::Tenant, &self.tenant),
            (Key::ClientId, &self.client_id),
            (Key::ApiScope, &self.api_scope),
            (Key::GraphUrl, &self.graph_url),
        ] {
            partial.set(key, value.clone());
        }
        partial
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sign in with a device code and cache your tokens.
    #[command(long_about = "\
Sign in with a device code and cache your tokens.

Prints a web address and a code: open the address, enter the code and sign in (graph-sim's page
explains how a simulated user approves it). graphfeed then caches a token for its API, a token
for Microsoft Graph (Files.ReadWrite) and the refresh token in tokens.json, readable by you only
(mode 0600). Expired tokens are refreshed automatically.

Example:
  graphfeed login")]
    Login,

    /// Forget the cached tokens and saved upload sessions.
    #[command(long_about = "\
Forget the cached tokens: deletes tokens.json, and the saved upload sessions (uploads/), whose
upload URLs work without a token. graphfeed keeps your connection; use `graphfeed disconnect`
first to end it.

Example:
  graphfeed logout")]
    Logout,

    /// Save settings to config.json, or show the effective settings.
    #[command(long_about = "\
Save settings to config.json, or show the effective settings and where each came from.

Each setting flag given is saved; settings not given keep their saved values. A flag or an
environment variable still wins over config.json when a command runs.

Examples:
  graphfeed configure --api-url https://abc123.execute-api.eu-west-1.amazonaws.com \\
      --authority https://login.microsoftonline.com --graph-url https://graph.microsoft.com/v1.0 \\
      --tenant organizations --client-id <client app id> --api-scope api://<api app id>/access_as_user
  graphfeed configure --show")]
    Configure(ConfigureArgs),

    /// Connect your OneDrive to graphfeed (POST /connect).
    #[command(long_about = "\
Connect your OneDrive to graphfeed (POST /connect): graphfeed exchanges your sign-in for access
to your drive, subscribes to its changes and walks it once; from then on every change becomes a
change event (`graphfeed changes`). Connecting again is safe: it renews what needs renewing.

Example:
  graphfeed connect")]
    Connect(JsonFlag),

    /// Show your connection's state (GET /connect).
    #[command(long_about = "\
Show your connection's state (GET /connect): the state (baseline_pending, active, renewing,
expired, needs_reauth, resyncing, disconnected), why, the drive, the subscription and when it
expires, and when graphfeed last walked the drive.

Example:
  graphfeed status --json")]
    Status(JsonFlag),

    /// Disconnect your OneDrive from graphfeed (DELETE /connect).
    #[command(long_about = "\
Disconnect your OneDrive from graphfeed (DELETE /connect): graphfeed deletes its subscription
and the tokens it stored for you. Your cached sign-in stays (`graphfeed logout` forgets it).

Example:
  graphfeed disconnect")]
    Disconnect(JsonFlag),

    /// Upload a file to your OneDrive; large files resume after an interruption.
    #[command(long_about = "\
Upload a file to your OneDrive with your Graph token.

Files up to 4 MiB go in one request. Larger files go in an upload session, in fragments of a
multiple of 320 KiB (10 MiB by default), with a progress bar on a terminal. The session is saved
in graphfeed's configuration directory before the first fragment: if the upload is interrupted
(Ctrl-C, a crash, a lost network), run the same command again and it continues where it stopped.

Example:
  graphfeed upload ./backup.tar --to /Backups/2026 --conflict replace")]
    Upload(UploadArgs),

    /// Print change events from graphfeed (GET /changes).
    #[command(long_about = "\
Print change events from graphfeed (GET /changes), one a line (`#42 created /Documents/a.txt
(file, 25 MiB)`), or as JSON with --json. Reads page after page from --after (default: from
the beginning); --follow keeps polling until Ctrl-C. Nothing is remembered between runs: the
last cursor is printed so that the next run can pass it as --after.

Example:
  graphfeed changes --after 41 --follow")]
    Changes(ChangesArgs),
}

#[derive(Debug, Clone, Args)]
pub struct JsonFlag {
    /// Print graphfeed's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ConfigureArgs {
    /// Print the effective settings and where each came from, instead of saving.
    #[arg(long)]
    pub show: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// The local file to upload.
    pub file: PathBuf,

    /// The OneDrive folder to upload into (it must exist).
    #[arg(long, value_name = "FOLDER", default_value = "/")]
    pub to: String,

    /// What to do when the name is taken in OneDrive.
    #[arg(long, value_enum, default_value_t = Conflict::Fail)]
    pub conflict: Conflict,

    /// Fragment size of an upload session, in MiB, rounded down to a multiple of 320 KiB
    /// (5, 10 and 1.25 are exact).
    #[arg(long, value_name = "MIB", default_value = "10")]
    pub fragment_mib: FragmentSize,

    /// No progress bar and no notes; only the result.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ChangesArgs {
    /// Print the events after this cursor (0: from the beginning).
    #[arg(long, value_name = "CURSOR", default_value_t = 0)]
    pub after: u64,

    /// Keep polling for new events until Ctrl-C.
    #[arg(long)]
    pub follow: bool,

    /// Seconds between polls with --follow.
    #[arg(long, value_name = "SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,

    /// Events per request (1 to 500).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: u16,

    /// Print each event's JSON on one line.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
