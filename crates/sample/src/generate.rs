//! The deterministic data generator: every row of every table as COPY text.
//!
//! Row `id` of a table is a pure function of (seed, scale, table, id): each row has
//! its own generator seeded from the table's sub-seed and the row number, and the
//! cross-table facts a row needs (the org of a user, the project and creation time of
//! a task) are recomputed from the owning table's structure stream or read from the
//! [`Layout`]. So the same seed and scale give byte-identical data, tables are
//! independent of each other's attribute streams, and chunk sizes change nothing.

use crate::calendar::{slot_time, DATA_END_UNIX, DATA_START_UNIX, DAY, HISTORY_START_UNIX, SPAN};
use crate::copy_text::{push_u64, RowWriter};
use crate::layout::{Counts, Layout, Seeds, ARCHIVED, PROJECT_STATUSES};
use crate::rng::Rng;
use crate::schema::Table;
use crate::vocabulary::{
    AUDIT_ACTIONS, CHANNELS, CUSTOMERS, ESTIMATES, FILE_STEMS, FILE_TYPES, FIRST_NAMES, LAST_NAMES,
    ORG_ADJECTIVES, ORG_NOUNS, ORG_SUFFIXES, PLANS, PROJECT_CODENAMES, PROJECT_KINDS, SOURCES,
    TAGS, TASK_OBJECTS, TASK_QUALIFIERS, TASK_VERBS, TEAM_NAMES, WORDS,
};

/// Target size of one COPY chunk.
const CHUNK_BYTES: usize = 1 << 20;

/// Length of a sprint (`metadata->>'sprint'`).
const SPRINT: i64 = 14 * DAY;

/// The sample dataset at one scale and seed: row counts, the ownership layout and
/// the row generators.
#[derive(Clone)]
pub struct Dataset {
    scale: f64,
    seed: u64,
    counts: Counts,
    seeds: Seeds,
    layout: Layout,
}

/// A run of consecutive rows of one table in COPY text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Rows in `data`.
    pub rows: u64,
    /// Tab-separated, newline-terminated rows, ready for `COPY … FROM STDIN`.
    pub data: Vec<u8>,
}

/// The rows of one table as [`Chunk`]s of about 1 MiB, in id order.
#[derive(Debug)]
pub struct Chunks<'a> {
    dataset: &'a Dataset,
    table: Table,
    next: u64,
    last: u64,
}

impl Iterator for Chunks<'_> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.next > self.last {
            return None;
        }
        let mut data = Vec::with_capacity(CHUNK_BYTES + 4096);
        let first = self.next;
        while self.next <= self.last && data.len() < CHUNK_BYTES {
            self.dataset.write_row(self.table, self.next, &mut data);
            self.next += 1;
        }
        Some(Chunk {
            rows: self.next - first,
            data,
        })
    }
}

/// What other rows need to know about a task.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskCore {
    pub(crate) project: u64,
    /// 0-based org index.
    pub(crate) org: usize,
    pub(crate) created_at: i64,
}

/// An organization's generated attributes.
pub(crate) struct OrgRow {
    adjective: &'static str,
    noun: &'static str,
    suffix: &'static str,
    plan: &'static str,
    pub(crate) created_at: i64,
    pub(crate) domain: String,
}

/// Organization `id`: founded between 2022 and three months before the data range;
/// the five biggest are on the enterprise plan.
pub(crate) fn org_row(seeds: &Seeds, id: u64) -> OrgRow {
    let mut rng = seeds.row(Table::Organizations, id);
    let adjective = *rng.pick(ORG_ADJECTIVES);
    let noun = *rng.pick(ORG_NOUNS);
    let suffix = *rng.pick(ORG_SUFFIXES);
    let plan = if id <= 5 {
        "enterprise"
    } else {
        *rng.weighted(PLANS)
    };
    let founded_by = DATA_START_UNIX - 90 * DAY - HISTORY_START_UNIX;
    let created_at = HISTORY_START_UNIX + rng.below(founded_by as u64) as i64;
    let domain = format!(
        "{}-{}{id}.example",
        adjective.to_ascii_lowercase(),
        noun.to_ascii_lowercase()
    );
    OrgRow {
        adjective,
        noun,
        suffix,
        plan,
        created_at,
        domain,
    }
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("scale", &self.scale)
            .field("seed", &self.seed)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// The dataset for `scale` (1.0 ≈ 1,000,000 rows) and `seed`. Builds the
    /// ownership layout, which is proportional to the user count (fast).
    pub fn new(scale: f64, seed: u64) -> Dataset {
        let counts = Counts::new(scale);
        let seeds = Seeds::new(seed);
        let layout = Layout::new(&counts, &seeds);
        Dataset {
            scale,
            seed,
            counts,
            seeds,
            layout,
        }
    }

    /// The scale the dataset was built for.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The seed the dataset was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// How many rows `table` gets.
    pub fn rows(&self, table: Table) -> u64 {
        self.counts.get(table)
    }

    /// All rows of `table`, as COPY text chunks of about 1 MiB.
    pub fn chunks(&self, table: Table) -> Chunks<'_> {
        Chunks {
            dataset: self,
            table,
            next: 1,
            last: self.rows(table),
        }
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Appends row `id` (1-based; for `team_members` the membership number) of
    /// `table` as one COPY text line.
    pub fn write_row(&self, table: Table, id: u64, buf: &mut Vec<u8>) {
        match table {
            Table::Organizations => self.organization(id, buf),
            Table::Users => self.user(id, buf),
            Table::Teams => self.team(id, buf),
            Table::TeamMembers => self.team_member(id, buf),
            Table::Projects => self.project(id, buf),
            Table::Tasks => self.task(id, buf),
            Table::Comments => self.comment(id, buf),
            Table::Messages => self.message(id, buf),
            Table::Files => self.file(id, buf),
            Table::AuditLog => self.audit(id, buf),
        }
    }

    fn organization(&self, id: u64, buf: &mut Vec<u8>) {
        let org = org_row(&self.seeds, id);
        let mut row = RowWriter::new(buf);
        row.uint(id);
        let name = row.field();
        for (i, part) in [org.adjective, org.noun, org.suffix].iter().enumerate() {
            if i > 0 {
                name.push(b' ');
            }
            name.extend_from_slice(part.as_bytes());
        }
        row.text(org.plan);
        row.timestamp(org.created_at);
        row.end();
    }

    /// First name, last name and e-mail of user `id`; e-mails are unique (they
    /// contain the id) and about one in seven is mixed case, so logins look them up
    /// by `lower(email)`.
    pub(crate) fn user_identity(
        &self,
        id: u64,
        rng: &mut Rng,
    ) -> (&'static str, &'static str, String) {
        let first = *rng.pick(FIRST_NAMES);
        let last = *rng.pick(LAST_NAMES);
        let mixed_case = rng.chance(150);
        let org = self.layout.user_org[id as usize - 1] as usize;
        let domain = &self.layout.org_domain[org];
        let email = if mixed_case {
            format!("{first}.{last}{id}@{domain}")
        } else {
            format!(
                "{}.{}{id}@{domain}",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase()
            )
        };
        (first, last, email)
    }

    /// The stored e-mail of user `id` (1-based, at most the user count).
    pub(crate) fn user_email(&self, id: u64) -> String {
        self.user_identity(id, &mut self.seeds.row(Table::Users, id))
            .2
    }

    fn user(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::Users, id);
        let (first, last, email) = self.user_identity(id, &mut rng);
        let org = self.layout.user_org[id as usize - 1] as usize;
        let owner = self.layout.users_by_org[org][0] == id;
        let role = if owner {
            "owner"
        } else {
            *rng.weighted(&[(6, "admin"), (84, "member"), (10, "guest")])
        };
        let org_created = self.layout.org_created[org];
        let created_at = org_created + rng.below((DATA_START_UNIX - org_created) as u64) as i64;
        let deleted_at =
            (!owner && rng.chance(50)).then(|| DATA_START_UNIX + rng.below(SPAN as u64) as i64);
        // Most users logged in recently: now − u²·span.
        let mut last_login_at = (!rng.chance(30)).then(|| {
            let u = rng.unit();
            (DATA_END_UNIX - 1 - (u * u * SPAN as f64) as i64).max(created_at)
        });
        if let (Some(login), Some(deleted)) = (last_login_at, deleted_at) {
            if login > deleted {
                last_login_at = Some((deleted - rng.below(30 * DAY as u64) as i64).max(created_at));
            }
        }
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(org as u64 + 1);
        row.text(&email);
        let name = row.field();
        name.extend_from_slice(first.as_bytes());
        name.push(b' ');
        name.extend_from_slice(last.as_bytes());
        row.text(role);
        row.timestamp(created_at);
        row.opt_timestamp(last_login_at);
        row.opt_timestamp(deleted_at);
        row.end();
    }

    fn team(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::Teams, id);
        let org = self.layout.team_org[id as usize - 1] as usize;
        let org_created = self.layout.org_created[org];
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(org as u64 + 1);
        let name = *rng.pick(TEAM_NAMES);
        row.text(name);
        row.timestamp(org_created + rng.below((DATA_START_UNIX - org_created) as u64) as i64);
        row.end();
    }

    /// Membership `n`: user `(n-1) % users + 1` in round `(n-1) / users` joins the
    /// round-th team after a per-user offset among the org's teams, so pairs are
    /// distinct (every org has at least `teams_per_user` teams).
    fn team_member(&self, n: u64, buf: &mut Vec<u8>) {
        let users = self.rows(Table::Users);
        let user = (n - 1) % users + 1;
        let round = (n - 1) / users;
        debug_assert!(
            round < self.layout.teams_per_user,
            "membership {n} is in round {round}"
        );
        let org = self.layout.user_org[user as usize - 1] as usize;
        let teams = &self.layout.teams_by_org[org];
        let offset = self
            .seeds
            .structure(Table::TeamMembers, user)
            .below(teams.len() as u64);
        let team = teams[((offset + round) % teams.len() as u64) as usize];
        let mut rng = self.seeds.row(Table::TeamMembers, n);
        let mut row = RowWriter::new(buf);
        row.uint(team);
        row.uint(user);
        row.text(if rng.chance(120) { "lead" } else { "member" });
        row.timestamp(DATA_START_UNIX - 1 - rng.below(180 * DAY as u64) as i64);
        row.end();
    }

    fn project(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::Projects, id);
        let index = id as usize - 1;
        let org = self.layout.project_org[index] as usize;
        let status = self.layout.project_status[index];
        let org_created = self.layout.org_created[org];
        let created_at = org_created + rng.below((DATA_START_UNIX - org_created) as u64) as i64;
        let archived_at =
            (status == ARCHIVED).then(|| DATA_START_UNIX + rng.below(SPAN as u64) as i64);
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(org as u64 + 1);
        row.uint(self.layout.project_team[index]);
        let name = row.field();
        name.extend_from_slice(rng.pick(PROJECT_CODENAMES).as_bytes());
        name.push(b' ');
        name.extend_from_slice(rng.pick(PROJECT_KINDS).as_bytes());
        row.text(PROJECT_STATUSES[status as usize]);
        row.timestamp(created_at);
        row.opt_timestamp(archived_at);
        row.end();
    }

    /// Project, org and creation time of task `id`: busy projects get more tasks,
    /// and ids follow creation time.
    pub(crate) fn task_core(&self, id: u64) -> TaskCore {
        let mut rng = self.seeds.structure(Table::Tasks, id);
        let project = self.layout.busy_project(&mut rng);
        let created_at = slot_time(id, self.rows(Table::Tasks), rng.below(SPAN as u64));
        TaskCore {
            project,
            org: self.layout.org_of_project(project),
            created_at,
        }
    }

    fn task(&self, id: u64, buf: &mut Vec<u8>) {
        let core = self.task_core(id);
        let mut rng = self.seeds.row(Table::Tasks, id);
        let age = DATA_END_UNIX - core.created_at;
        // Old tasks are mostly done; the last weeks are mostly still open.
        let status = if age > 90 * DAY {
            *rng.weighted(&[
                (5, "open"),
                (3, "in_progress"),
                (4, "blocked"),
                (82, "done"),
                (6, "cancelled"),
            ])
        } else if age > 14 * DAY {
            *rng.weighted(&[
                (15, "open"),
                (12, "in_progress"),
                (6, "blocked"),
                (62, "done"),
                (5, "cancelled"),
            ])
        } else {
            *rng.weighted(&[
                (40, "open"),
                (30, "in_progress"),
                (8, "blocked"),
                (20, "done"),
                (2, "cancelled"),
            ])
        };
        let priority = *rng.weighted(&[(25, 1u64), (45, 2), (22, 3), (8, 4)]);
        let assignee = (!rng.chance(80)).then(|| self.layout.active_user(core.org, &mut rng));
        let due_date =
            (!rng.chance(250)).then(|| core.created_at.div_euclid(DAY) + 1 + rng.below(45) as i64);
        let settled = matches!(status, "done" | "cancelled");
        let window = if settled { 30 * DAY } else { 7 * DAY }.min(age - 1);
        let updated_at = core.created_at + rng.below(window as u64 + 1) as i64;

        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(core.project);
        row.uint(core.org as u64 + 1);
        let title = row.field();
        title.extend_from_slice(rng.pick(TASK_VERBS).as_bytes());
        title.push(b' ');
        title.extend_from_slice(rng.pick(TASK_OBJECTS).as_bytes());
        title.extend_from_slice(rng.pick(TASK_QUALIFIERS).as_bytes());
        row.text(status);
        row.uint(priority);
        row.opt_uint(assignee);
        row.opt_date(due_date);
        write_tags(row.field(), &mut rng);
        write_task_metadata(row.field(), core.created_at, &mut rng);
        row.timestamp(core.created_at);
        row.timestamp(updated_at);
        row.end();
    }

    fn comment(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::Comments, id);
        let time = slot_time(id, self.rows(Table::Comments), rng.below(SPAN as u64));
        // Comments go to tasks created before them, mostly recent ones.
        let tasks = self.rows(Table::Tasks);
        let newest = ((u128::from(tasks) * (time - DATA_START_UNIX) as u128 / SPAN as u128) as u64)
            .clamp(1, tasks);
        let task = newest - rng.skewed(newest as usize) as u64;
        let core = self.task_core(task);
        let created_at = if time > core.created_at {
            time
        } else {
            (core.created_at + 60 + rng.below(3600) as i64).min(DATA_END_UNIX - 1)
        };
        let user = self.layout.active_user(core.org, &mut rng);
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(task);
        row.uint(user);
        write_sentence(row.field(), &mut rng, 5, 30);
        row.timestamp(created_at);
        row.end();
    }

    fn message(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::Messages, id);
        let created_at = slot_time(id, self.rows(Table::Messages), rng.below(SPAN as u64));
        let org = self.layout.busy_org(&mut rng);
        let sender = self.layout.active_user(org, &mut rng);
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(org as u64 + 1);
        row.uint(sender);
        row.text(CHANNELS[rng.mildly_skewed(CHANNELS.len())]);
        write_sentence(row.field(), &mut rng, 4, 30);
        row.timestamp(created_at);
        row.end();
    }

    fn file(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::Files, id);
        let created_at = slot_time(id, self.rows(Table::Files), rng.below(SPAN as u64));
        let project = self.layout.busy_project(&mut rng);
        let org = self.layout.org_of_project(project);
        let uploader = self.layout.active_user(org, &mut rng);
        let (extension, mime, kib) = *rng.weighted(FILE_TYPES);
        // 0.1× to 3× the typical size, plus some bytes.
        let size = kib * 1024 * (10 + rng.below(290)) / 100 + rng.below(1024);
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(org as u64 + 1);
        row.uint(project);
        row.uint(uploader);
        let name = row.field();
        name.extend_from_slice(rng.pick(FILE_STEMS).as_bytes());
        name.push(b'-');
        push_u64(name, rng.between(1, 99));
        name.push(b'.');
        name.extend_from_slice(extension.as_bytes());
        row.uint(size);
        row.text(mime);
        row.timestamp(created_at);
        row.end();
    }

    fn audit(&self, id: u64, buf: &mut Vec<u8>) {
        let mut rng = self.seeds.row(Table::AuditLog, id);
        let created_at = slot_time(id, self.rows(Table::AuditLog), rng.below(SPAN as u64));
        let org = self.layout.busy_org(&mut rng);
        let user = (!rng.chance(50)).then(|| self.layout.active_user(org, &mut rng));
        let (action, entity) = *rng.weighted(AUDIT_ACTIONS);
        let entity_id = match entity {
            "task" => rng.between(1, self.rows(Table::Tasks)),
            "comment" => rng.between(1, self.rows(Table::Comments)),
            "file" => rng.between(1, self.rows(Table::Files)),
            "project" => self.layout.busy_project(&mut rng),
            "user" => self.layout.active_user(org, &mut rng),
            _ => org as u64 + 1,
        };
        let mut row = RowWriter::new(buf);
        row.uint(id);
        row.uint(org as u64 + 1);
        row.opt_uint(user);
        row.text(action);
        row.text(entity);
        row.uint(entity_id);
        let details = row.field();
        details.extend_from_slice(b"{\"ip\": \"10.");
        for i in 0..3 {
            push_u64(details, rng.below(256));
            details.push(if i < 2 { b'.' } else { b'"' });
        }
        details.extend_from_slice(b", \"client\": \"");
        details.extend_from_slice(
            rng.weighted(&[(70, "web"), (20, "api"), (10, "mobile")])
                .as_bytes(),
        );
        details.extend_from_slice(b"\"}");
        row.timestamp(created_at);
        row.end();
    }
}

/// `{tag,tag}`: zero to three distinct tags, common ones more often.
fn write_tags(out: &mut Vec<u8>, rng: &mut Rng) {
    let count = *rng.weighted(&[(25, 0usize), (40, 1), (25, 2), (10, 3)]);
    let mut chosen: [usize; 3] = [usize::MAX; 3];
    let mut n = 0;
    for _ in 0..count {
        let tag = rng.mildly_skewed(TAGS.len());
        if !chosen[..n].contains(&tag) {
            chosen[n] = tag;
            n += 1;
        }
    }
    out.push(b'{');
    for (i, tag) in chosen[..n].iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(TAGS[*tag].as_bytes());
    }
    out.push(b'}');
}

/// The sprint label of a time: `sprint-01` … `sprint-27`, two weeks each.
pub(crate) fn sprint_label(unix_secs: i64) -> String {
    let sprint = (unix_secs - DATA_START_UNIX).div_euclid(SPRINT) + 1;
    format!("sprint-{sprint:02}")
}

/// How many sprints the data range holds.
pub(crate) fn sprint_count() -> i64 {
    (SPAN + SPRINT - 1) / SPRINT
}

/// `{"source": …, "estimate": …, "sprint": …}` and for some tasks `"customer"`.
fn write_task_metadata(out: &mut Vec<u8>, created_at: i64, rng: &mut Rng) {
    out.extend_from_slice(b"{\"source\": \"");
    out.extend_from_slice(SOURCES[rng.skewed(SOURCES.len())].as_bytes());
    out.extend_from_slice(b"\", \"estimate\": ");
    push_u64(out, *rng.pick(ESTIMATES));
    out.extend_from_slice(b", \"sprint\": \"");
    out.extend_from_slice(sprint_label(created_at).as_bytes());
    out.push(b'"');
    if rng.chance(150) {
        out.extend_from_slice(b", \"customer\": \"");
        out.extend_from_slice(rng.pick(CUSTOMERS).as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

/// `min..=max` words from [`WORDS`] (common ones more often), capitalized, with a
/// final period.
fn write_sentence(out: &mut Vec<u8>, rng: &mut Rng, min: u64, max: u64) {
    let count = rng.between(min, max);
    for i in 0..count {
        let word = WORDS[rng.mildly_skewed(WORDS.len())].as_bytes();
        if i == 0 {
            out.push(word[0].to_ascii_uppercase());
            out.extend_from_slice(&word[1..]);
        } else {
            out.push(b' ');
            out.extend_from_slice(word);
        }
    }
    out.push(b'.');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_text(dataset: &Dataset, table: Table) -> String {
        let bytes: Vec<u8> = dataset.chunks(table).flat_map(|c| c.data).collect();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn chunks_hold_every_row_once() {
        let dataset = Dataset::new(0.01, 5);
        for table in Table::ALL {
            let chunks: Vec<Chunk> = dataset.chunks(table).collect();
            let rows: u64 = chunks.iter().map(|c| c.rows).sum();
            let lines: usize = chunks
                .iter()
                .map(|c| c.data.iter().filter(|b| **b == b'\n').count())
                .sum();
            assert_eq!(rows, dataset.rows(table), "{table:?}");
            assert_eq!(lines as u64, rows, "{table:?}");
        }
    }

    #[test]
    fn rows_have_as_many_fields_as_columns() {
        let dataset = Dataset::new(0.005, 1);
        for table in Table::ALL {
            let columns = table.columns().split(',').count();
            for line in table_text(&dataset, table).lines() {
                assert_eq!(line.split('\t').count(), columns, "{table:?}: {line}");
            }
        }
    }

    #[test]
    fn team_memberships_are_distinct_pairs() {
        let dataset = Dataset::new(0.05, 3);
        let text = table_text(&dataset, Table::TeamMembers);
        let mut pairs: Vec<(&str, &str)> = text
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                (f.next().unwrap(), f.next().unwrap())
            })
            .collect();
        let n = pairs.len();
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(pairs.len(), n);
    }

    #[test]
    fn tasks_belong_to_their_projects_org_and_most_are_done() {
        let dataset = Dataset::new(0.02, 8);
        let text = table_text(&dataset, Table::Tasks);
        let mut done = 0;
        let mut total = 0;
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let project: usize = f[1].parse().unwrap();
            let org: u32 = f[2].parse().unwrap();
            assert_eq!(dataset.layout().project_org[project - 1] + 1, org);
            if f[6] != "\\N" {
                let assignee: usize = f[6].parse().unwrap();
                assert_eq!(dataset.layout().user_org[assignee - 1] + 1, org);
            }
            total += 1;
            done += usize::from(f[4] == "done");
        }
        assert!(done * 2 > total, "{done} of {total} done");
    }

    #[test]
    fn comments_come_after_their_tasks() {
        let dataset = Dataset::new(0.01, 2);
        let tasks = table_text(&dataset, Table::Tasks);
        let created: Vec<&str> = tasks
            .lines()
            .map(|l| l.split('\t').nth(10).unwrap())
            .collect();
        for line in table_text(&dataset, Table::Comments).lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let task: usize = f[1].parse().unwrap();
            // Same format, so text order is time order.
            assert!(f[4] > created[task - 1], "{line}");
        }
    }

    #[test]
    fn sprints_cover_the_range() {
        assert_eq!(sprint_label(DATA_START_UNIX), "sprint-01");
        assert_eq!(
            sprint_label(DATA_END_UNIX - 1),
            format!("sprint-{:02}", sprint_count())
        );
    }
}
