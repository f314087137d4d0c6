//! `audit`: who changed what, when and from where, newest first.

use clap::Args;

use super::output::when;
use super::{exit, Ctx};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// How many rows to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only this actor's rows: an account name, or local:OSUSER for the CLI's operator.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
}

pub async fn run(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<u8> {
    let rows = ctx.store().await?.audit(args.user.as_deref(), args.limit).await?;
    if ctx.out.json {
        ctx.out.json(&rows);
    } else if rows.is_empty() {
        println!("No audit rows{}.", args.user.map(|u| format!(" for '{u}'")).unwrap_or_default());
    } else {
        let table = rows
            .iter()
            .map(|r| {
                vec![
                    when(&r.at),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone().unwrap_or_default(),
                    match (&r.detail, r.count) {
                        (detail, 1) => detail.clone().unwrap_or_default(),
                        (Some(detail), n) => format!("{detail} ({n} times)"),
                        (None, n) => format!("({n} times)"),
                    },
                    r.origin.clone(),
                ]
            })
            .collect();
        ctx.out.table(&["when", "who", "what", "on", "detail", "from"], table);
    }
    Ok(exit::OK)
}
