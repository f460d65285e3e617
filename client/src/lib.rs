//! graphfeed's command-line client, as a library so each part is tested on its own: settings
//! ([`config`]), sign-in and the token cache ([`auth`]), graphfeed's API ([`api`]), resumable
//! uploads ([`upload`]) and change events ([`changes`]). [`run`] carries out one parsed command;
//! `main.rs` only wires it to the process (stdout, stderr, the environment, the exit code).

pub mod api;
pub mod auth;
pub mod changes;
pub mod cli;
pub mod config;
pub mod console;
pub mod error;
pub mod secure_file;
pub mod upload;

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use crate::api::Api;
use crate::auth::Session;
use crate::cli::{ChangesArgs, Cli, Command, UploadArgs};
use crate::config::{EnvLookup, Key, Paths, Settings};
use crate::console::Console;
pub use crate::error::Error;

/// Carries out `cli` with the environment `env`, writing to `console`.
pub async fn run(cli: Cli, env: EnvLookup<'_>, console: &mut Console<'_>) -> Result<(), Error> {
    let paths = Paths::resolve(env)?;
    let flags = cli.settings.to_partial();
    let file = config::load_file(&paths.config_file())?;
    if let Command::Configure(args) = &cli.command {
        if args.show {
            let settings = config::resolve(&flags, env, &file, &paths.config_file())?;
            return show_settings(&settings, &paths, console);
        }
        return save_settings(&flags, &paths, console);
    }
    if let Command::Logout = &cli.command {
        return if auth::logout(&paths)? {
            console.line(format!("Signed out: deleted {}.", paths.token_cache().display()))
        } else {
            console.line("Not signed in; nothing to forget.")
        };
    }
    let settings = config::resolve(&flags, env, &file, &paths.config_file())?;
    let http = http_client()?;
    match cli.command {
        Command::Login => {
            let account = auth::login(&http, &settings, &paths, console).await?;
            console.line(format!(
                "Signed in as {}. Tokens cached in {}.",
                account.describe(),
                paths.token_cache().display()
            ))
        }
        // Handled above, before the settings are needed.
        Command::Logout | Command::Configure(_) => Ok(()),
        Command::Connect(args) => {
            let mut session = Session::load(&http, &settings, &paths)?;
            let mut api = Api::new(&http, &settings.api_url, &mut session);
            let answer = api.call(Method::POST, "/connect", &[], console).await?;
            if args.json {
                return console.line(answer.body);
            }
            print_connected(&answer.body, console)
        }
        Command::Status(args) => {
            let mut session = Session::load(&http, &settings, &paths)?;
            let mut api = Api::new(&http, &settings.api_url, &mut session);
            let answer = api.call(Method::GET, "/connect", &[], console).await?;
            if args.json {
                return console.line(answer.body);
            }
            print_status(&answer.body, console)
        }
        Command::Disconnect(args) => {
            let mut session = Session::load(&http, &settings, &paths)?;
            let mut api = Api::new(&http, &settings.api_url, &mut session);
            let answer = api.call(Method::DELETE, "/connect", &[], console).await?;
            if args.json {
                let body = if answer.body.is_null() {
                    serde_json::json!({"disconnected": true})
                } else {
                    answer.body
                };
                return console.line(body);
            }
            console.line(
                "Disconnected: graphfeed deleted its subscription and the tokens it stored for you. You are \
                 still signed in here (`graphfeed logout` forgets that).",
            )
        }
        Command::Upload(args) => upload(&http, &settings, &paths, &args, console).await,
        Command::Changes(args) => changes(&http, &settings, &paths, &args, console).await,
    }
}

/// One HTTP client for the whole command (rustls, like the rest of the workspace).
fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .user_agent(concat!("graphfeed-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| Error::Unreachable {
            service: "the network",
            url: String::new(),
            detail: crate::error::describe(e),
        })
}

async fn upload(
    http: &reqwest::Client,
    settings: &Settings,
    paths: &Paths,
    args: &UploadArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let mut session = Session::load(http, settings, paths)?;
    let request = upload::UploadRequest {
        file: args.file.clone(),
        folder: args.to.clone(),
        conflict: args.conflict,
        fragment: args.fragment_mib,
        quiet: args.quiet,
    };
    let uploaded = upload::upload(http, &settings.graph_url, paths, &mut session, &request, console).await?;
    console.line(format!(
        "Uploaded {} (id {}, {} bytes = {})",
        uploaded.path,
        uploaded.id,
        uploaded.size,
        changes::human_size(uploaded.size)
    ))
}

async fn changes(
    http: &reqwest::Client,
    settings: &Settings,
    paths: &Paths,
    args: &ChangesArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let mut session = Session::load(http, settings, paths)?;
    let mut api = Api::new(http, &settings.api_url, &mut session);
    let request = changes::ChangesRequest {
        after: args.after,
        limit: args.limit,
        follow: args.follow,
        interval: Duration::from_secs(args.interval),
        json: args.json,
    };
    let cursor = changes::read(&mut api, &request, console).await?;
    console.note(format!(
        "Read up to cursor {cursor}; continue with `graphfeed changes --after {cursor}`."
    ));
    Ok(())
}

/// `2026-12-21T11:41:06Z (in 29 days)`.
fn when(raw: &Value) -> Option<String> {
    let text = raw.as_str()?;
    let Ok(at) = DateTime::parse_from_rfc3339(text) else {
        return Some(text.to_owned());
    };
    let at = at.with_timezone(&Utc);
    let delta = at - Utc::now();
    let relative = if delta.num_seconds() >= 0 {
        format!("in {}", span(delta))
    } else {
        format!("{} ago", span(-delta))
    };
    Some(format!(
        "{} ({relative})",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

fn span(delta: chrono::TimeDelta) -> String {
    match delta {
        d if d.num_days() >= 2 => format!("{} days", d.num_days()),
        d if d.num_hours() >= 2 => format!("{} hours", d.num_hours()),
        d if d.num_minutes() >= 2 => format!("{} minutes", d.num_minutes()),
        d => format!("{} s", d.num_seconds()),
    }
}

fn print_connected(body: &Value, console: &mut Console<'_>) -> Result<(), Error> {
    console.line(format!(
        "Connected: drive {}",
        body["drive_id"].as_str().unwrap_or("(unknown)")
    ))?;
    if let Some(id) = body["subscription_id"].as_str() {
        let expires = when(&body["expires_at"]).unwrap_or_else(|| "(unknown)".to_owned());
        console.line(format!("subscription: {id}, expires {expires}"))?;
    }
    if let Some(walk) = body["walk"].as_str() {
        console.line(format!(
            "walk:         a {walk} walk is queued; its events appear in `graphfeed changes`"
        ))?;
    }
    Ok(())
}

fn print_status(body: &Value, console: &mut Console<'_>) -> Result<(), Error> {
    let text = |name: &str| body[name].as_str().map(str::to_owned);
    console.line(format!(
        "state:        {}",
        text("state").unwrap_or_else(|| "(unknown)".to_owned())
    ))?;
    if let Some(reason) = text("reason") {
        console.line(format!("reason:       {reason}"))?;
    }
    if let Some(drive) = text("drive_id") {
        console.line(format!("drive:        {drive}"))?;
    }
    match text("subscription_id") {
        Some(id) => {
            let expires = when(&body["expires_at"]).unwrap_or_else(|| "(unknown)".to_owned());
            console.line(format!("subscription: {id}, expires {expires}"))?;
        }
        None => console.line("subscription: none")?,
    }
    let walked = when(&body["last_walk_completed_at"]).unwrap_or_else(|| "not yet".to_owned());
    console.line(format!("last walk:    {walked}"))
}

fn show_settings(settings: &Settings, paths: &Paths, console: &mut Console<'_>) -> Result<(), Error> {
    for (key, value, origin) in settings.described() {
        console.line(format!("{:<10} {value}  ({origin})", key.name()))?;
    }
    let config_file = paths.config_file();
    let token_cache = paths.token_cache();
    console.line(format!(
        "config file {}{}",
        config_file.display(),
        if config_file.exists() {
            ""
        } else {
            " (not created yet)"
        }
    ))?;
    console.line(format!(
        "token cache {}{}",
        token_cache.display(),
        if token_cache.exists() {
            " (signed in)"
        } else {
            " (not signed in)"
        }
    ))
}

fn save_settings(
    flags: &config::PartialSettings,
    paths: &Paths,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    if flags.is_empty() {
        return Err(Error::Usage(
            "nothing to save: give one or more of --api-url, --authority, --tenant, --client-id, --api-scope, \
             --graph-url, or --show to see the settings"
                .to_owned(),
        ));
    }
    let saved = config::save_file(&paths.config_file(), flags)?;
    for key in Key::ALL {
        if let Some(value) = flags.get(key).and(saved.get(key)) {
            console.line(format!("saved {} = {value}", key.name()))?;
        }
    }
    console.line(format!("in {}", paths.config_file().display()))
}
