//! `lumen keys`, `lumen tenants` and `lumen usage`: the store from the terminal (the same
//! database `lumen serve` uses; the first admin key is bootstrapped this way or with
//! `--admin-key`).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use lumen_engine::registry::lumen_home;
use lumen_store::{GroupBy, KeyLimits, NewKey, Period, Role, Store, UsageQuery, Width};

/// Where the database is.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// The keys and usage database: a file path, sqlite://PATH or postgres://USER@HOST/DB.
    /// Default: $LUMEN_HOME/lumen.db.
    #[arg(
        long,
        env = "LUMEN_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
}

/// `lumen keys …`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key; prints it as JSON with its secret in "key" (shown this once only).
    Create(CreateArgs),
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id; servers refuse it within a second.
    Revoke {
        /// The key's id (`key_…`).
        id: String,
    },
    /// Give a key a new secret (printed once); the old secret stops working.
    Rotate {
        /// The key's id (`key_…`).
        id: String,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// A label for the key.
    #[arg(long)]
    name: String,
    /// `user` (default) or `admin`.
    #[arg(long, default_value = "user", value_parser = parse_role)]
    role: Role,
    /// The tenant (id or name; create it with `lumen tenants create`).
    #[arg(long)]
    tenant: Option<String>,
    /// A model the key may use; repeatable. Default: every model.
    #[arg(long = "model")]
    models: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Highest scheduling priority the key may use.
    #[arg(long)]
    max_priority: Option<i64>,
    /// Unix time after which the key is refused.
    #[arg(long)]
    expires_at: Option<u64>,
}

/// The limits a key or a tenant takes (a tenant's hold over all its keys together).
#[derive(Args, Debug)]
struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute (prompt plus max_tokens reserved per request).
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_parallel: Option<u64>,
    /// Tokens per budget period.
    #[arg(long)]
    budget_tokens: Option<u64>,
    /// `day` or `month` (default month).
    #[arg(long, value_parser = parse_period)]
    budget_period: Option<Period>,
}

impl LimitArgs {
    fn limits(self, max_priority: Option<i64>) -> KeyLimits {
        KeyLimits {
            rpm: self.rpm,
            tpm: self.tpm,
            max_parallel: self.max_parallel,
            budget_tokens: self.budget_tokens,
            budget_period: self.budget_period,
            max_priority,
        }
    }
}

/// `lumen tenants …`.
#[derive(Args, Debug)]
pub struct TenantsArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Subcommand, Debug)]
enum TenantsCommand {
    /// Create a tenant, optionally with limits over all its keys together; prints it as JSON.
    Create {
        /// Its unique name.
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List tenants.
    List,
}

/// `lumen usage`.
#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Bucket width: 1m, 1h or 1d.
    #[arg(long, default_value = "1d", value_parser = parse_width)]
    bucket_width: Width,
    /// How many buckets back from now.
    #[arg(long, default_value_t = 7)]
    buckets: u64,
    /// Split by: api_key_id, model, tenant (comma-separated).
    #[arg(long, value_delimiter = ',')]
    group_by: Vec<String>,
    /// Only this key's usage.
    #[arg(long)]
    key: Option<String>,
    /// A model's price for the report's `cost`: MODEL=IN:OUT, USD per million input and
    /// output tokens (as `lumen serve --price`); repeatable.
    #[arg(long = "price", env = "LUMEN_PRICES", value_delimiter = ',')]
    prices: Vec<String>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "admin" => Ok(Role::Admin),
        "user" => Ok(Role::User),
        _ => Err(format!("role must be admin or user, not '{s}'")),
    }
}

fn parse_period(s: &str) -> Result<Period, String> {
    Period::parse(s).ok_or_else(|| format!("period must be day or month, not '{s}'"))
}

fn parse_width(s: &str) -> Result<Width, String> {
    Width::parse(s).ok_or_else(|| format!("bucket width must be 1m, 1h or 1d, not '{s}'"))
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

async fn open(db: &DbArgs) -> Result<Store> {
    let url = db.database_url.clone().unwrap_or_else(|| {
        lumen_home()
            .join(lumen_store::DEFAULT_FILE)
            .to_string_lossy()
            .into_owned()
    });
    Store::open(&url)
        .await
        .with_context(|| format!("opening the database {url}"))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn with_secret(key: &lumen_store::ApiKey, secret: String) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(key)?;
    v["key"] = serde_json::Value::String(secret);
    Ok(v)
}

fn limit_text(v: Option<u64>) -> String {
    v.map_or("-".into(), |n| n.to_string())
}

/// Runs `lumen keys`.
pub fn keys(args: KeysArgs) -> Result<()> {
    block_on(async move {
        let store = open(&args.db).await?;
        match args.command {
            KeysCommand::Create(c) => {
                let (key, secret) = store
                    .create_key(NewKey {
                        name: c.name,
                        role: Some(c.role),
                        tenant: c.tenant,
                        models: (!c.models.is_empty()).then_some(c.models),
                        limits: c.limits.limits(c.max_priority),
                        expires_at: c.expires_at,
                    })
                    .await?;
                print_json(&with_secret(&key, secret)?)?;
                eprintln!(
                    "Store the secret in \"key\" now: it is not kept and cannot be shown again."
                );
            }
            KeysCommand::List => {
                println!(
                    "{:<28} {:<20} {:<14} {:<6} {:<8} {:>6} {:>8} {:>8} {:>12}",
                    "ID", "NAME", "PREFIX", "ROLE", "STATE", "RPM", "TPM", "PARALLEL", "BUDGET"
                );
                let now = lumen_store::clock::unix_secs();
                for k in store.list_keys(None).await? {
                    let state = if k.revoked {
                        "revoked"
                    } else if !k.is_active(now) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<28} {:<20} {:<14} {:<6} {:<8} {:>6} {:>8} {:>8} {:>12}",
                        k.id,
                        k.name,
                        k.prefix,
                        k.role.as_str(),
                        state,
                        limit_text(k.limits.rpm),
                        limit_text(k.limits.tpm),
                        limit_text(k.limits.max_parallel),
                        k.limits.budget_tokens.map_or("-".into(), |b| format!(
                            "{b}/{}",
                            k.limits.budget_period.unwrap_or(Period::Month).as_str()
                        )),
                    );
                }
            }
            KeysCommand::Revoke { id } => print_json(&store.revoke_key(&id).await?)?,
            KeysCommand::Rotate { id } => {
                let (key, secret) = store.rotate_key(&id).await?;
                print_json(&with_secret(&key, secret)?)?;
            }
        }
        store.close().await;
        Ok(())
    })
}

/// Runs `lumen tenants`.
pub fn tenants(args: TenantsArgs) -> Result<()> {
    block_on(async move {
        let store = open(&args.db).await?;
        match args.command {
            TenantsCommand::Create { name, limits } => {
                print_json(&store.create_tenant(&name, limits.limits(None)).await?)?
            }
            TenantsCommand::List => {
                for t in store.list_tenants().await? {
                    println!("{}\t{}", t.id, t.name);
                }
            }
        }
        store.close().await;
        Ok(())
    })
}

/// Runs `lumen usage`: the report `/admin/usage` gives, as JSON.
pub fn usage(args: UsageArgs) -> Result<()> {
    let mut group_by = GroupBy::default();
    for g in &args.group_by {
        match g.as_str() {
            "api_key_id" => group_by.api_key_id = true,
            "model" => group_by.model = true,
            "tenant" => group_by.tenant = true,
            other => anyhow::bail!("cannot group by '{other}': use api_key_id, model or tenant"),
        }
    }
    let buckets = args.buckets.clamp(1, 10_000);
    let prices = lumen_store::Price::parse_flags(&args.prices).map_err(anyhow::Error::msg)?;
    block_on(async move {
        let store = open(&args.db).await?;
        let w = args.bucket_width;
        let end = lumen_store::clock::unix_secs() + 1;
        let start = w.floor(end.saturating_sub((buckets - 1) * w.secs()));
        let page = store
            .usage_report(&UsageQuery {
                start_time: start,
                end_time: end,
                width: w,
                group_by,
                key_id: args.key,
                limit: buckets as usize,
                prices,
            })
            .await?;
        print_json(&page)?;
        store.close().await;
        Ok(())
    })
}
