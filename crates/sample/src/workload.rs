//! The workload of the "saas" app: its queries, how often each runs, and how their
//! parameters are picked from the generated data (busy orgs and projects more often,
//! recent tasks more often, dates inside the data range, words from the bodies).
//!
//! The sample's clock stops at [`crate::DATA_END_UNIX`]: writes stamp rows shortly
//! before it (never `now()`), so new audit rows land in the monthly partitions.

use crate::calendar::{DATA_END_UNIX, DATA_START_UNIX, DAY, SPAN};
use crate::generate::{sprint_count, sprint_label, Dataset};
use crate::param::Param;
use crate::rng::Rng;
use crate::schema::Table;
use crate::vocabulary::{
    ACTIVE_STATUSES, CHANNELS, CUSTOMERS, FIRST_NAMES, SOURCES, TAGS, TASK_STATUSES, WORDS,
};

/// Whether a query reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryKind {
    Read,
    Write,
}

/// One query of the workload.
#[derive(Debug, Clone, Copy)]
pub struct QuerySpec {
    /// Unique name, e.g. `project_open_tasks`.
    pub name: &'static str,
    /// Feature area: dashboard, tasks, search, reporting, activity, auth, writes.
    pub group: &'static str,
    pub kind: QueryKind,
    /// Relative frequency; the weights of all queries add up to 100.
    pub weight: u32,
    /// The statement, with `$n` parameters.
    pub sql: &'static str,
    /// The N+1 pattern: when set, `sql` and then this statement once per row of its
    /// result (bound to the row's second column, skipped when NULL) run in one
    /// transaction, the way an ORM lazily loads a relation.
    pub per_row_sql: Option<&'static str>,
    params: fn(&Dataset, &mut Rng) -> Vec<Param>,
}

impl QuerySpec {
    pub(crate) fn params(&self, dataset: &Dataset, rng: &mut Rng) -> Vec<Param> {
        (self.params)(dataset, rng)
    }
}

/// Every query of the workload.
pub fn queries() -> &'static [QuerySpec] {
    QUERIES
}

/// The query named `name`.
pub fn query(name: &str) -> Option<&'static QuerySpec> {
    QUERIES.iter().find(|q| q.name == name)
}

/// The words message and comment bodies are made of: each is a term
/// `plainto_tsquery('english', …)` finds in some messages at any scale above tiny.
pub fn search_words() -> &'static [&'static str] {
    WORDS
}

const fn read(
    name: &'static str,
    group: &'static str,
    weight: u32,
    sql: &'static str,
    params: fn(&Dataset, &mut Rng) -> Vec<Param>,
) -> QuerySpec {
    QuerySpec {
        name,
        group,
        kind: QueryKind::Read,
        weight,
        sql,
        per_row_sql: None,
        params,
    }
}

const fn write(
    name: &'static str,
    weight: u32,
    sql: &'static str,
    params: fn(&Dataset, &mut Rng) -> Vec<Param>,
) -> QuerySpec {
    QuerySpec {
        name,
        group: "writes",
        kind: QueryKind::Write,
        weight,
        sql,
        per_row_sql: None,
        params,
    }
}

static QUERIES: &[QuerySpec] = &[
    // ── dashboard ──────────────────────────────────────────────────────────────
    read(
        "project_open_tasks",
        "dashboard",
        12,
        "SELECT id, title, status, priority, assignee_id, due_date FROM tasks \
         WHERE project_id = $1 AND status IN ('open', 'in_progress', 'blocked') \
         ORDER BY due_date NULLS LAST LIMIT 50",
        |d, r| vec![project(d, r)],
    ),
    read(
        "my_tasks",
        "dashboard",
        10,
        "SELECT id, project_id, title, status, priority, due_date FROM tasks \
         WHERE assignee_id = $1 AND status = $2 \
         ORDER BY due_date NULLS LAST, priority DESC LIMIT 50",
        |d, r| vec![active_user(d, r), pick_text(r, ACTIVE_STATUSES)],
    ),
    read(
        "org_projects",
        "dashboard",
        5,
        "SELECT id, name, status, team_id, created_at FROM projects \
         WHERE org_id = $1 AND archived_at IS NULL ORDER BY created_at DESC LIMIT 20",
        |d, r| vec![org(d, r)],
    ),
    read(
        "team_members",
        "dashboard",
        3,
        "SELECT u.id, u.name, u.email, tm.role FROM team_members tm \
         JOIN users u ON u.id = tm.user_id \
         WHERE tm.team_id = $1 AND u.deleted_at IS NULL ORDER BY u.name",
        |d, r| vec![team(d, r)],
    ),
    // ── tasks ─────────────────────────────────────────────────────────────────
    read(
        "task_detail",
        "tasks",
        8,
        "SELECT t.id, t.title, t.status, t.priority, t.due_date, t.tags, t.metadata, \
         t.created_at, t.updated_at, p.name AS project \
         FROM tasks t JOIN projects p ON p.id = t.project_id WHERE t.id = $1",
        |d, r| vec![recent_task(d, r)],
    ),
    read(
        "tasks_due_between",
        "tasks",
        4,
        "SELECT id, title, status, assignee_id, due_date FROM tasks \
         WHERE org_id = $1 AND due_date BETWEEN $2 AND $3 AND status <> 'done' \
         ORDER BY due_date LIMIT 100",
        |d, r| {
            let from = DATA_START_UNIX / DAY + r.below((SPAN / DAY) as u64) as i64;
            vec![org(d, r), Param::Date(from), Param::Date(from + 7)]
        },
    ),
    read(
        "tasks_by_tag",
        "tasks",
        4,
        "SELECT id, title, status, tags FROM tasks \
         WHERE org_id = $1 AND tags @> ARRAY[$2::text] ORDER BY created_at DESC LIMIT 50",
        |d, r| vec![org(d, r), pick_text(r, TAGS)],
    ),
    read(
        "tasks_by_metadata",
        "tasks",
        3,
        "SELECT id, title, status FROM tasks \
         WHERE org_id = $1 AND metadata @> $2::text::jsonb ORDER BY created_at DESC LIMIT 50",
        |d, r| vec![org(d, r), metadata_filter(r)],
    ),
    read(
        "tasks_in_sprint",
        "tasks",
        2,
        "SELECT id, title, status, assignee_id FROM tasks \
         WHERE project_id = $1 AND metadata->>'sprint' = $2 ORDER BY priority DESC",
        |d, r| {
            let sprint = r.between(1, sprint_count() as u64) as i64;
            let time = DATA_START_UNIX + (sprint - 1) * 14 * DAY;
            vec![project(d, r), text(&sprint_label(time))]
        },
    ),
    read(
        "stale_blocked_tasks",
        "tasks",
        2,
        "SELECT id, title, assignee_id, updated_at FROM tasks \
         WHERE org_id = $1 AND status = 'blocked' AND updated_at < $2 \
         ORDER BY updated_at LIMIT 20",
        |d, r| vec![org(d, r), Param::Timestamp(DATA_END_UNIX - 14 * DAY)],
    ),
    QuerySpec {
        name: "project_tasks_n_plus_one",
        group: "tasks",
        kind: QueryKind::Read,
        weight: 2,
        sql: "SELECT id, assignee_id FROM tasks WHERE project_id = $1 \
              ORDER BY created_at DESC LIMIT 20",
        per_row_sql: Some("SELECT id, name, email FROM users WHERE id = $1"),
        params: |d, r| vec![project(d, r)],
    },
    // ── search ────────────────────────────────────────────────────────────────
    read(
        "message_search",
        "search",
        3,
        "SELECT id, channel, sender_id, created_at FROM messages \
         WHERE org_id = $1 AND to_tsvector('english', body) @@ plainto_tsquery('english', $2) \
         ORDER BY created_at DESC LIMIT 20",
        |d, r| vec![org(d, r), pick_text(r, WORDS)],
    ),
    read(
        "user_search",
        "search",
        2,
        "SELECT id, name, email FROM users \
         WHERE org_id = $1 AND deleted_at IS NULL AND lower(name) LIKE $2 \
         ORDER BY name LIMIT 20",
        |d, r| {
            let name = r.pick(FIRST_NAMES).to_ascii_lowercase();
            let prefix: String = name.chars().take(3).collect();
            vec![org(d, r), Param::Text(format!("{prefix}%"))]
        },
    ),
    // ── reporting ─────────────────────────────────────────────────────────────
    read(
        "tasks_per_status",
        "reporting",
        3,
        "SELECT status, count(*) FROM tasks WHERE org_id = $1 GROUP BY status ORDER BY status",
        |d, r| vec![org(d, r)],
    ),
    read(
        "overdue_per_assignee",
        "reporting",
        2,
        "SELECT assignee_id, count(*) AS overdue FROM tasks \
         WHERE org_id = $1 AND status IN ('open', 'in_progress', 'blocked') AND due_date < $2 \
         GROUP BY assignee_id ORDER BY overdue DESC LIMIT 10",
        |d, r| {
            vec![
                org(d, r),
                Param::Date(DATA_END_UNIX / DAY - r.below(60) as i64),
            ]
        },
    ),
    read(
        "storage_per_project",
        "reporting",
        2,
        "SELECT project_id, count(*) AS files, sum(size_bytes) AS bytes FROM files \
         WHERE org_id = $1 GROUP BY project_id ORDER BY bytes DESC LIMIT 10",
        |d, r| vec![org(d, r)],
    ),
    read(
        "comments_per_day",
        "reporting",
        1,
        "SELECT date_trunc('day', c.created_at) AS day, count(*) FROM comments c \
         JOIN tasks t ON t.id = c.task_id \
         WHERE t.org_id = $1 AND c.created_at >= $2 AND c.created_at < $3 \
         GROUP BY 1 ORDER BY 1",
        |d, r| {
            let (from, to) = window(r, 30 * DAY);
            vec![org(d, r), from, to]
        },
    ),
    // ── activity ──────────────────────────────────────────────────────────────
    read(
        "org_recent_activity",
        "activity",
        5,
        "SELECT id, user_id, action, entity_type, entity_id, created_at FROM audit_log \
         WHERE org_id = $1 AND created_at >= $2 AND created_at < $3 \
         ORDER BY created_at DESC LIMIT 50",
        |d, r| {
            let days = *r.pick(&[1, 7, 30]);
            let (from, to) = window(r, days * DAY);
            vec![org(d, r), from, to]
        },
    ),
    read(
        "task_comments",
        "activity",
        6,
        "SELECT c.id, c.body, c.created_at, u.name FROM comments c \
         JOIN users u ON u.id = c.user_id WHERE c.task_id = $1 ORDER BY c.created_at",
        |d, r| vec![recent_task(d, r)],
    ),
    read(
        "project_files",
        "activity",
        3,
        "SELECT id, name, size_bytes, mime_type, created_at FROM files \
         WHERE project_id = $1 ORDER BY size_bytes DESC LIMIT 20",
        |d, r| vec![project(d, r)],
    ),
    read(
        "channel_messages",
        "activity",
        4,
        "SELECT id, sender_id, body, created_at FROM messages \
         WHERE org_id = $1 AND channel = $2 AND created_at < $3 \
         ORDER BY created_at DESC LIMIT 50",
        |d, r| {
            let channel = CHANNELS[r.mildly_skewed(CHANNELS.len())];
            let (_, before) = window(r, 0);
            vec![org(d, r), text(channel), before]
        },
    ),
    // ── auth ──────────────────────────────────────────────────────────────────
    read(
        "login_lookup",
        "auth",
        4,
        "SELECT id, org_id, name, role FROM users \
         WHERE lower(email) = lower($1) AND deleted_at IS NULL",
        |d, r| {
            let user = r.between(1, d.rows(Table::Users));
            let email = d.user_email(user);
            // People type their address in any case.
            let typed = if r.chance(200) {
                email.to_ascii_uppercase()
            } else {
                email
            };
            vec![Param::Text(typed)]
        },
    ),
    // ── writes (10%) ──────────────────────────────────────────────────────────
    write(
        "insert_comment",
        3,
        "INSERT INTO comments (task_id, user_id, body, created_at) \
         VALUES ($1, $2, $3, $4) RETURNING id",
        |d, r| {
            let task = recent_task_id(d, r);
            let org = d.task_core(task).org;
            let user = d.layout().active_user(org, r);
            let body = (0..r.between(3, 15))
                .map(|_| WORDS[r.mildly_skewed(WORDS.len())])
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                Param::Int(task as i64),
                Param::Int(user as i64),
                Param::Text(body),
                clock(r),
            ]
        },
    ),
    write(
        "update_task_status",
        3,
        "UPDATE tasks SET status = $2, updated_at = $3 WHERE id = $1",
        |d, r| vec![recent_task(d, r), pick_text(r, TASK_STATUSES), clock(r)],
    ),
    write(
        "insert_audit_event",
        2,
        "INSERT INTO audit_log (org_id, user_id, action, entity_type, entity_id, details, \
         created_at) VALUES ($1, $2, $3, 'task', $4, $5::text::jsonb, $6)",
        |d, r| {
            let task = recent_task_id(d, r);
            let org = d.task_core(task).org;
            let user = d.layout().active_user(org, r);
            let action = *r.pick(&["task.updated", "task.viewed", "task.assigned"]);
            vec![
                Param::Int(org as i64 + 1),
                Param::Int(user as i64),
                text(action),
                Param::Int(task as i64),
                text("{\"client\": \"web\"}"),
                clock(r),
            ]
        },
    ),
    write(
        "touch_last_login",
        2,
        "UPDATE users SET last_login_at = $2 WHERE id = $1",
        |d, r| vec![active_user(d, r), clock(r)],
    ),
];

fn text(s: &str) -> Param {
    Param::Text(s.to_string())
}

/// One of `list`, uniformly.
fn pick_text(r: &mut Rng, list: &[&str]) -> Param {
    let item = *r.pick(list);
    text(item)
}

/// An org id, bigger orgs more often (they have more users at work).
fn org(d: &Dataset, r: &mut Rng) -> Param {
    Param::Int(d.layout().busy_org(r) as i64 + 1)
}

/// A project id, busy projects more often.
fn project(d: &Dataset, r: &mut Rng) -> Param {
    Param::Int(d.layout().busy_project(r) as i64)
}

/// A user of a busy org, the org's most active people more often.
fn active_user(d: &Dataset, r: &mut Rng) -> Param {
    let org = d.layout().busy_org(r);
    Param::Int(d.layout().active_user(org, r) as i64)
}

/// A team of a busy org.
fn team(d: &Dataset, r: &mut Rng) -> Param {
    let org = d.layout().busy_org(r);
    Param::Int(*r.pick(&d.layout().teams_by_org[org]) as i64)
}

/// A task id, recent tasks (high ids) more often.
fn recent_task_id(d: &Dataset, r: &mut Rng) -> u64 {
    let tasks = d.rows(Table::Tasks);
    tasks - r.skewed(tasks as usize) as u64
}

fn recent_task(d: &Dataset, r: &mut Rng) -> Param {
    Param::Int(recent_task_id(d, r) as i64)
}

/// A `metadata @>` filter: by source, customer or estimate.
fn metadata_filter(r: &mut Rng) -> Param {
    let json = match r.below(10) {
        0..=4 => format!("{{\"source\": \"{}\"}}", r.pick(SOURCES)),
        5..=7 => format!("{{\"customer\": \"{}\"}}", r.pick(CUSTOMERS)),
        _ => format!("{{\"estimate\": {}}}", r.pick(&[1, 2, 3, 5, 8, 13])),
    };
    Param::Text(json)
}

/// A time range of `len` seconds ending in the last quarter of the data range.
fn window(r: &mut Rng, len: i64) -> (Param, Param) {
    let end = DATA_END_UNIX - r.below(90 * DAY as u64) as i64;
    (Param::Timestamp(end - len), Param::Timestamp(end))
}

/// "Now" for a write: within the last day before the sample's clock stops.
fn clock(r: &mut Rng) -> Param {
    Param::Timestamp(DATA_END_UNIX - 1 - r.below(DAY as u64) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_weights_add_up_to_100() {
        let mut names: Vec<&str> = queries().iter().map(|q| q.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), queries().len());
        assert!(queries().len() >= 20);
        let total: u32 = queries().iter().map(|q| q.weight).sum();
        assert_eq!(total, 100);
        let writes: u32 = queries()
            .iter()
            .filter(|q| q.kind == QueryKind::Write)
            .map(|q| q.weight)
            .sum();
        assert_eq!(writes, 10);
        assert_eq!(
            queries().iter().filter(|q| q.per_row_sql.is_some()).count(),
            1
        );
    }

    #[test]
    fn parameter_counts_match_the_statements() {
        let dataset = Dataset::new(0.01, 1);
        let mut rng = Rng::new(4);
        for q in queries() {
            let params = q.params(&dataset, &mut rng);
            let highest = (1..=9)
                .rev()
                .find(|n| q.sql.contains(&format!("${n}")))
                .unwrap_or(0);
            assert_eq!(params.len(), highest, "{}", q.name);
        }
    }

    #[test]
    fn ids_stay_in_range_at_tiny_scales() {
        let dataset = Dataset::new(0.0001, 2);
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            for q in queries() {
                for p in q.params(&dataset, &mut rng) {
                    if let Param::Int(v) = p {
                        assert!(v >= 1, "{}: {v}", q.name);
                    }
                }
            }
        }
    }
}
