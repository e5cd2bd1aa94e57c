//! How many rows each table gets at a scale, and who belongs to whom: the org of
//! every user, team and project, the teams and users of every org, and how busy each
//! org and project is. Everything here is small (proportional to the user count) and
//! computed from the per-row generators, so it is the same for the same seed.

use crate::rng::{mix64, sub_seed, Rng, Weighted};
use crate::schema::Table;

/// Rows of each table at scale 1.0 (≈ 1,000,000 in total).
const BASE_ROWS: [(Table, f64); 10] = [
    (Table::Organizations, 200.0),
    (Table::Users, 10_000.0),
    (Table::Teams, 1_000.0),
    (Table::TeamMembers, 15_000.0),
    (Table::Projects, 5_000.0),
    (Table::Tasks, 300_000.0),
    (Table::Comments, 300_000.0),
    (Table::Messages, 200_000.0),
    (Table::Files, 50_000.0),
    (Table::AuditLog, 120_000.0),
];

/// Row counts of every table at one scale. They depend on the scale only, never on
/// the seed, so the total is known before anything is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    rows: [u64; 10],
}

impl Counts {
    pub(crate) fn new(scale: f64) -> Counts {
        let scale = if scale.is_finite() && scale > 0.0 {
            scale
        } else {
            0.0
        };
        let mut rows = [0u64; 10];
        for (table, base) in BASE_ROWS {
            rows[table.index()] = ((base * scale).round() as u64).max(1);
        }
        let orgs = rows[Table::Organizations.index()];
        // Every org has a user and a team (owner, default team).
        rows[Table::Users.index()] = rows[Table::Users.index()].max(orgs);
        rows[Table::Teams.index()] = rows[Table::Teams.index()].max(orgs);
        // Memberships are distinct (team, user) pairs: each user joins up to
        // `teams_per_user` teams of their org, and every org has that many teams.
        let users = rows[Table::Users.index()];
        let tm = Table::TeamMembers.index();
        rows[tm] = rows[tm].min(users * teams_per_user(rows[Table::Teams.index()], orgs));
        Counts { rows }
    }

    pub(crate) fn get(&self, table: Table) -> u64 {
        self.rows[table.index()]
    }
}

/// How many teams each user can join: 2 when there are at least two teams per org
/// (then every org is guaranteed two), else 1.
fn teams_per_user(teams: u64, orgs: u64) -> u64 {
    if teams >= 2 * orgs {
        2
    } else {
        1
    }
}

/// Distinguishes [`Seeds::structure`] from [`Seeds::row`].
const STRUCTURE: u64 = 0x5354_5255_4354_5552;

/// The per-table seeds: each table is generated from its own stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seeds {
    seeds: [u64; 10],
}

impl Seeds {
    pub(crate) fn new(seed: u64) -> Seeds {
        let mut seeds = [0u64; 10];
        for table in Table::ALL {
            seeds[table.index()] = sub_seed(seed, table.name());
        }
        Seeds { seeds }
    }

    pub(crate) fn get(&self, table: Table) -> u64 {
        self.seeds[table.index()]
    }

    /// The generator of row `id` of `table`'s attributes.
    pub(crate) fn row(&self, table: Table, id: u64) -> Rng {
        Rng::for_row(self.get(table), id)
    }

    /// A second, independent generator of row `id`, for the attributes other rows
    /// look up (a user's org, a task's project and time): [`Layout`] and the child
    /// tables recompute them from here without replaying the attribute stream.
    pub(crate) fn structure(&self, table: Table, id: u64) -> Rng {
        Rng::for_row(mix64(self.get(table) ^ STRUCTURE), id)
    }
}

/// Ownership and activity structure of the dataset. Ids are 1-based like the table
/// ids; orgs are indexed 0-based (`org id - 1`).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Org of each user (index `user id - 1`), 0-based.
    pub(crate) user_org: Vec<u32>,
    /// User ids of each org, ascending; never empty.
    pub(crate) users_by_org: Vec<Vec<u64>>,
    /// Org of each team, 0-based.
    pub(crate) team_org: Vec<u32>,
    /// Team ids of each org, ascending; never empty.
    pub(crate) teams_by_org: Vec<Vec<u64>>,
    /// Org (0-based) and team id of each project.
    pub(crate) project_org: Vec<u32>,
    pub(crate) project_team: Vec<u64>,
    /// Project status (index into `PROJECT_STATUSES`).
    pub(crate) project_status: Vec<u8>,
    /// Picks a project by how busy it is (index = `project id - 1`).
    pub(crate) project_activity: Weighted,
    /// Picks an org by size (its user count).
    pub(crate) org_activity: Weighted,
    /// Founding time of each org (Unix seconds).
    pub(crate) org_created: Vec<i64>,
    /// E-mail domain of each org.
    pub(crate) org_domain: Vec<String>,
    /// How many teams each user joins at most (see [`Counts`]).
    pub(crate) teams_per_user: u64,
}

/// Project statuses; `archived` projects have `archived_at` set.
pub(crate) const PROJECT_STATUSES: &[&str] = &["active", "on_hold", "completed", "archived"];
/// Index of `archived` in [`PROJECT_STATUSES`].
pub(crate) const ARCHIVED: u8 = 3;

/// Size weight of org `index` (0-based): Zipf with exponent 1, so the first few orgs
/// are big and most are small.
pub(crate) fn org_size_weight(index: usize) -> u64 {
    1_000_000 / (index as u64 + 1)
}

impl Layout {
    pub(crate) fn new(counts: &Counts, seeds: &Seeds) -> Layout {
        let orgs = counts.get(Table::Organizations) as usize;
        let org_size = Weighted::new((0..orgs).map(org_size_weight));

        let mut org_created = Vec::with_capacity(orgs);
        let mut org_domain = Vec::with_capacity(orgs);
        for id in 1..=orgs as u64 {
            let org = crate::generate::org_row(seeds, id);
            org_created.push(org.created_at);
            org_domain.push(org.domain);
        }

        let users = counts.get(Table::Users);
        let mut user_org = Vec::with_capacity(users as usize);
        let mut users_by_org = vec![Vec::new(); orgs];
        for id in 1..=users {
            // The first user of each org is its owner; the rest join by org size.
            let org = if id <= orgs as u64 {
                id as usize - 1
            } else {
                org_size.sample(&mut seeds.structure(Table::Users, id))
            };
            user_org.push(org as u32);
            users_by_org[org].push(id);
        }

        let teams = counts.get(Table::Teams);
        let per_user = teams_per_user(teams, orgs as u64);
        let guaranteed = orgs as u64 * per_user;
        let mut team_org = Vec::with_capacity(teams as usize);
        let mut teams_by_org = vec![Vec::new(); orgs];
        for id in 1..=teams {
            let org = if id <= guaranteed {
                (id as usize - 1) % orgs
            } else {
                org_size.sample(&mut seeds.structure(Table::Teams, id))
            };
            team_org.push(org as u32);
            teams_by_org[org].push(id);
        }

        let projects = counts.get(Table::Projects);
        let mut project_org = Vec::with_capacity(projects as usize);
        let mut project_team = Vec::with_capacity(projects as usize);
        let mut project_status = Vec::with_capacity(projects as usize);
        let mut project_weight = Vec::with_capacity(projects as usize);
        for id in 1..=projects {
            let mut rng = seeds.structure(Table::Projects, id);
            let org = if id <= orgs as u64 {
                id as usize - 1
            } else {
                org_size.sample(&mut rng)
            };
            let team = *rng.pick(&teams_by_org[org]);
            let status = *rng.weighted(&[(65, 0u8), (8, 1), (17, 2), (10, ARCHIVED)]);
            // Busy projects get many tasks and files: weight (1 + 9u)², 1..100.
            let u = rng.unit();
            let busy = (1.0 + 9.0 * u) * (1.0 + 9.0 * u);
            let weight = match status {
                ARCHIVED => busy as u64 / 4 + 1,
                _ => busy as u64 + 1,
            };
            project_org.push(org as u32);
            project_team.push(team);
            project_status.push(status);
            project_weight.push(weight);
        }

        let org_activity = Weighted::new(users_by_org.iter().map(|u| u.len() as u64));
        Layout {
            user_org,
            users_by_org,
            team_org,
            teams_by_org,
            project_org,
            project_team,
            project_status,
            project_activity: Weighted::new(project_weight),
            org_activity,
            org_created,
            org_domain,
            teams_per_user: per_user,
        }
    }

    /// A project id (1-based) chosen by activity.
    pub(crate) fn busy_project(&self, rng: &mut Rng) -> u64 {
        self.project_activity.sample(rng) as u64 + 1
    }

    /// An org index (0-based) chosen by size.
    pub(crate) fn busy_org(&self, rng: &mut Rng) -> usize {
        self.org_activity.sample(rng)
    }

    /// A user of `org` with a Zipf-like skew (a few people do most of the work).
    pub(crate) fn active_user(&self, org: usize, rng: &mut Rng) -> u64 {
        *rng.pick_skewed(&self.users_by_org[org])
    }

    /// The org index (0-based) of project `id`.
    pub(crate) fn org_of_project(&self, id: u64) -> usize {
        self.project_org[id as usize - 1] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_one_is_about_a_million_rows() {
        let counts = Counts::new(1.0);
        let total: u64 = Table::ALL.iter().map(|t| counts.get(*t)).sum();
        assert!((950_000..=1_050_000).contains(&total), "{total}");
        assert_eq!(counts.get(Table::Tasks), 300_000);
    }

    #[test]
    fn tiny_scales_keep_every_table_non_empty() {
        for scale in [0.0, 1e-9, 0.0001, 0.001, 0.0025, 0.01] {
            let counts = Counts::new(scale);
            for table in Table::ALL {
                assert!(counts.get(table) >= 1, "{table:?} at {scale}");
            }
            assert!(counts.get(Table::Users) >= counts.get(Table::Organizations));
            assert!(counts.get(Table::Teams) >= counts.get(Table::Organizations));
        }
    }

    #[test]
    fn every_org_has_users_and_enough_teams() {
        for scale in [0.001, 0.01, 0.1] {
            let counts = Counts::new(scale);
            let layout = Layout::new(&counts, &Seeds::new(9));
            for org in 0..counts.get(Table::Organizations) as usize {
                assert!(!layout.users_by_org[org].is_empty());
                assert!(layout.teams_by_org[org].len() as u64 >= layout.teams_per_user);
            }
            for (i, team) in layout.project_team.iter().enumerate() {
                assert_eq!(layout.team_org[*team as usize - 1], layout.project_org[i]);
            }
        }
    }

    #[test]
    fn the_first_orgs_are_the_biggest() {
        let counts = Counts::new(1.0);
        let layout = Layout::new(&counts, &Seeds::new(1));
        let first = layout.users_by_org[0].len();
        let last = layout.users_by_org[199].len();
        assert!(first > 10 * last, "{first} vs {last}");
    }
}
