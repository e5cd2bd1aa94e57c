//! Word lists the generator builds names, titles and message bodies from, and the
//! workload draws search terms, tags and filter values from.
//!
//! Every entry is plain ASCII without tabs, newlines, backslashes or quotes, so it
//! needs no escaping in COPY text, array or JSON literals. The search words contain
//! no English stop words, so `plainto_tsquery('english', word)` is never empty.

/// Words of message and comment bodies, most common first (bodies pick them with a
/// skew towards the front of the list).
#[rustfmt::skip]
pub(crate) const WORDS: &[&str] = &[
    "deploy", "release", "customer", "invoice", "dashboard", "meeting", "review", "update",
    "build", "test", "issue", "feature", "design", "budget", "launch", "roadmap", "sprint",
    "ticket", "report", "metrics", "pipeline", "server", "database", "query", "latency",
    "outage", "incident", "backlog", "estimate", "deadline", "feedback", "onboarding",
    "contract", "renewal", "pricing", "discount", "payment", "refund", "subscription",
    "migration", "schema", "index", "cache", "proxy", "replica", "backup", "restore",
    "monitoring", "alert", "pager", "rollback", "hotfix", "patch", "branch", "merge",
    "conflict", "staging", "production", "environment", "config", "secret", "token", "password",
    "login", "signup", "account", "profile", "settings", "permission", "role", "audit",
    "compliance", "security", "vulnerability", "encryption", "certificate", "firewall",
    "network", "bandwidth", "storage", "bucket", "upload", "download", "export", "import",
    "spreadsheet", "document", "presentation", "slides", "mockup", "wireframe", "prototype",
    "usability", "accessibility", "translation", "localization", "mobile", "android", "iphone",
    "tablet", "browser", "chrome", "firefox", "safari", "desktop", "laptop", "keyboard",
    "monitor", "printer", "office", "remote", "travel", "conference", "workshop", "training",
    "hiring", "interview", "candidate", "offer", "salary", "bonus", "vacation", "holiday",
    "schedule", "calendar", "agenda", "minutes", "summary", "decision", "proposal", "approval",
    "signature", "legal", "partner", "vendor", "supplier", "shipment", "warehouse", "inventory",
    "order", "checkout", "cart", "coupon", "campaign", "newsletter", "webinar", "analytics",
    "funnel", "conversion", "retention", "churn", "revenue", "forecast", "quarter", "target",
    "quota", "lead", "prospect", "demo", "trial", "upgrade", "downgrade", "cancellation",
    "support", "escalation", "priority", "severity", "regression", "crash", "freeze", "timeout",
    "memory", "leak", "performance", "benchmark", "profiling", "optimization", "refactor",
    "cleanup", "documentation", "tutorial", "guide", "changelog", "version", "library",
    "framework", "dependency", "package", "container", "cluster", "kubernetes", "docker",
    "terraform", "ansible", "script", "cron", "queue", "worker", "webhook", "endpoint",
    "integration", "slack", "email", "notification", "reminder", "digest", "search", "filter",
    "sorting", "pagination", "thumbnail", "image", "video", "audio", "recording", "transcript",
    "captions", "font", "color", "logo", "brand", "website", "landing", "homepage", "footer",
    "header", "sidebar", "modal", "button", "form", "validation", "error", "warning", "message",
    "banner", "tooltip", "animation", "transition", "layout", "grid", "responsive", "theme",
    "darkmode", "icon", "avatar", "comment", "mention", "reaction", "thread", "channel",
    "workspace", "project", "team", "milestone", "epic", "story", "task", "subtask",
    "checklist", "label", "tag", "attachment", "link", "preview", "draft", "publish", "archive",
    "delete", "duplicate", "template", "workflow", "automation", "trigger", "condition",
    "action", "reviewer", "assignee", "owner", "stakeholder", "sponsor", "executive", "board",
    "investor", "funding", "runway", "headcount", "culture", "offsite", "retrospective",
    "standup", "planning", "grooming", "velocity", "burndown", "capacity", "blocker", "risk",
    "mitigation", "contingency", "postmortem", "runbook", "playbook", "oncall", "rotation",
    "handover", "weekend", "overtime", "coffee", "lunch", "pizza", "birthday", "anniversary",
    "celebration", "kudos", "thanks", "welcome", "farewell", "announcement", "reorg",
    "strategy", "vision", "mission", "okr", "kpi", "goal", "progress", "status", "blocked",
    "shipped", "verified", "approved", "rejected", "postponed", "urgent", "quick", "question",
    "answer", "idea", "brainstorm", "experiment", "hypothesis", "survey", "persona", "journey",
    "research", "insight", "pattern", "tradeoff", "architecture", "diagram", "whiteboard",
    "notebook", "sandbox", "quantum", "zeppelin", "aurora", "nebula", "tundra", "glacier",
    "volcano", "meteor",
];

/// Given names (users).
#[rustfmt::skip]
pub(crate) const FIRST_NAMES: &[&str] = &[
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas",
    "Sarah", "Charles", "Karen", "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Betty",
    "Mark", "Sandra", "Steven", "Ashley", "Paul", "Emily", "Andrew", "Donna", "Joshua",
    "Michelle", "Kevin", "Carol", "Brian", "Amanda", "George", "Melissa", "Timothy", "Deborah",
    "Ronald", "Stephanie", "Jason", "Rebecca", "Ryan", "Sharon", "Jacob", "Laura", "Gary",
    "Cynthia", "Nicholas", "Amy", "Eric", "Kathleen", "Jonathan", "Angela", "Stephen",
    "Shirley", "Larry", "Emma", "Justin", "Brenda", "Scott", "Pamela", "Brandon", "Nicole",
    "Aisha", "Wei", "Yuki", "Priya", "Mateo", "Sofia", "Lukas", "Ingrid", "Omar", "Fatima",
    "Kenji", "Chloe", "Ravi", "Leila", "Hugo", "Astrid", "Diego", "Amara", "Noah", "Zoe",
];

/// Family names (users).
#[rustfmt::skip]
pub(crate) const LAST_NAMES: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Chen", "Kim", "Patel", "Singh",
    "Tanaka", "Muller", "Schmidt", "Rossi", "Dubois", "Silva", "Kowalski", "Novak", "Larsen",
    "Jensen", "Okafor", "Mensah", "Haddad", "Cohen", "Ivanova", "Petrov", "Yamamoto", "Suzuki",
    "Wang", "Zhang", "Liu", "Kaur", "Gupta", "Fischer", "Weber", "Meyer",
];

/// First words of organization names.
#[rustfmt::skip]
pub(crate) const ORG_ADJECTIVES: &[&str] = &[
    "Blue", "Bright", "Swift", "Silver", "Golden", "Northern", "Quiet", "Bold", "Clever", "Red",
    "Green", "Rapid", "Solid", "Open", "Clear", "Deep", "Lucky", "Prime", "True", "Urban",
    "Wild", "Happy", "Iron", "Crystal", "Cosmic",
];

/// Second words of organization names.
#[rustfmt::skip]
pub(crate) const ORG_NOUNS: &[&str] = &[
    "Harbor", "Falcon", "River", "Summit", "Maple", "Orbit", "Pixel", "Beacon", "Canyon",
    "Forge", "Meadow", "Comet", "Lantern", "Anchor", "Cedar", "Delta", "Ember", "Fjord",
    "Granite", "Horizon", "Jaguar", "Kite", "Lotus", "Nimbus", "Otter",
];

/// Last words of organization names.
#[rustfmt::skip]
pub(crate) const ORG_SUFFIXES: &[&str] = &[
    "Labs", "Inc", "Systems", "Software", "Group", "Studio", "Works", "Analytics", "Health",
    "Logistics", "Media", "Partners",
];

/// Team names.
#[rustfmt::skip]
pub(crate) const TEAM_NAMES: &[&str] = &[
    "Platform", "Growth", "Mobile", "Design", "Support", "Data", "Infrastructure", "Sales",
    "Marketing", "Security", "Payments", "Search", "Billing", "Frontend", "Backend", "QA",
    "Operations", "Finance", "Legal", "People",
];

/// First words of project names.
#[rustfmt::skip]
pub(crate) const PROJECT_CODENAMES: &[&str] = &[
    "Apollo", "Atlas", "Borealis", "Calypso", "Drift", "Echo", "Fenix", "Gemini", "Helix",
    "Ion", "Juno", "Kepler", "Lyra", "Mercury", "Nova", "Onyx", "Pulsar", "Quasar", "Rigel",
    "Sirius", "Titan", "Umbra", "Vega", "Zephyr",
];

/// Second words of project names.
pub(crate) const PROJECT_KINDS: &[&str] = &[
    "Website Redesign",
    "Mobile App",
    "Billing Revamp",
    "Data Warehouse",
    "Onboarding Flow",
    "API v2",
    "Migration",
    "Launch",
    "Compliance Audit",
    "Search Upgrade",
    "Design System",
    "Customer Portal",
    "Analytics",
    "Integrations",
    "Performance",
    "Internal Tools",
];

/// Verbs of task titles.
pub(crate) const TASK_VERBS: &[&str] = &[
    "Fix",
    "Add",
    "Update",
    "Remove",
    "Refactor",
    "Investigate",
    "Document",
    "Test",
    "Design",
    "Review",
    "Migrate",
    "Optimize",
    "Implement",
    "Deploy",
    "Clean up",
];

/// Objects of task titles.
pub(crate) const TASK_OBJECTS: &[&str] = &[
    "login page",
    "checkout flow",
    "invoice export",
    "search results",
    "user settings",
    "email templates",
    "dashboard charts",
    "API rate limits",
    "password reset",
    "notification emails",
    "file uploads",
    "audit log",
    "billing webhooks",
    "team invites",
    "mobile navigation",
    "dark mode",
    "CSV import",
    "SSO integration",
    "onboarding checklist",
    "permissions model",
    "report scheduler",
    "data retention job",
    "error pages",
    "landing page copy",
    "pricing table",
];

/// Qualifiers of task titles.
pub(crate) const TASK_QUALIFIERS: &[&str] = &[
    "",
    "",
    "",
    " for enterprise plans",
    " on Safari",
    " in staging",
    " before launch",
    " for large accounts",
    " after migration",
    " on Android",
    " (follow-up)",
    " v2",
];

/// Task statuses, as in the `tasks_status_check` constraint.
pub(crate) const TASK_STATUSES: &[&str] = &["open", "in_progress", "blocked", "done", "cancelled"];

/// Statuses an active task can be moved to by the workload.
pub(crate) const ACTIVE_STATUSES: &[&str] = &["open", "in_progress", "blocked"];

/// Task tags, most common first.
#[rustfmt::skip]
pub(crate) const TAGS: &[&str] = &[
    "bug", "feature", "frontend", "backend", "customer", "tech-debt", "urgent", "design",
    "performance", "security", "docs", "infra", "mobile", "api", "billing", "onboarding", "qa",
    "research", "ux", "data", "legal", "i18n",
];

/// Values of `metadata->>'source'`, most common first.
pub(crate) const SOURCES: &[&str] = &["web", "api", "email", "slack", "import", "zapier"];

/// Values of `metadata->>'customer'`.
#[rustfmt::skip]
pub(crate) const CUSTOMERS: &[&str] = &[
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell",
    "Cyberdyne", "Soylent", "Massive Dynamic",
];

/// Story-point estimates in `metadata->>'estimate'`.
pub(crate) const ESTIMATES: &[u64] = &[1, 2, 3, 5, 8, 13];

/// Chat channels, most active first.
#[rustfmt::skip]
pub(crate) const CHANNELS: &[&str] = &[
    "general", "engineering", "random", "support", "product", "design", "sales", "ops",
    "incidents", "announcements", "marketing", "hiring",
];

/// File name stems.
#[rustfmt::skip]
pub(crate) const FILE_STEMS: &[&str] = &[
    "design-spec", "meeting-notes", "invoice", "screenshot", "roadmap", "contract", "report",
    "mockup", "export", "logo", "demo-recording", "requirements", "budget", "architecture",
    "release-notes", "photo",
];

/// File types: (weight, (extension, MIME type, typical size in KiB)).
pub(crate) const FILE_TYPES: &[(u64, (&str, &str, u64))] = &[
    (30, ("pdf", "application/pdf", 400)),
    (25, ("png", "image/png", 300)),
    (10, ("jpg", "image/jpeg", 500)),
    (
        10,
        (
            "docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            80,
        ),
    ),
    (
        8,
        (
            "xlsx",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            120,
        ),
    ),
    (7, ("csv", "text/csv", 200)),
    (4, ("mp4", "video/mp4", 40_000)),
    (3, ("zip", "application/zip", 8_000)),
    (3, ("txt", "text/plain", 4)),
];

/// Audit actions: (weight, (action, entity type)).
pub(crate) const AUDIT_ACTIONS: &[(u64, (&str, &str))] = &[
    (30, ("task.updated", "task")),
    (20, ("user.login", "user")),
    (15, ("task.created", "task")),
    (15, ("comment.created", "comment")),
    (8, ("file.uploaded", "file")),
    (4, ("member.invited", "user")),
    (3, ("project.created", "project")),
    (2, ("project.archived", "project")),
    (2, ("settings.changed", "organization")),
    (1, ("user.deleted", "user")),
];

/// Organization plans.
pub(crate) const PLANS: &[(u64, &str)] = &[
    (40, "free"),
    (35, "team"),
    (20, "business"),
    (5, "enterprise"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> bool {
        !s.bytes()
            .any(|b| matches!(b, b'\t' | b'\n' | b'\r' | b'\\' | b'"' | b'\'' | b','))
    }

    #[test]
    fn entries_need_no_escaping() {
        let lists: &[&[&str]] = &[
            WORDS,
            FIRST_NAMES,
            LAST_NAMES,
            ORG_ADJECTIVES,
            ORG_NOUNS,
            ORG_SUFFIXES,
            TEAM_NAMES,
            PROJECT_CODENAMES,
            PROJECT_KINDS,
            TASK_VERBS,
            TASK_OBJECTS,
            TASK_QUALIFIERS,
            TAGS,
            SOURCES,
            CUSTOMERS,
            CHANNELS,
            FILE_STEMS,
        ];
        for list in lists {
            assert!(!list.is_empty());
            for entry in *list {
                assert!(plain(entry), "{entry:?}");
            }
        }
        for list in [WORDS, FIRST_NAMES, LAST_NAMES, TAGS, CHANNELS] {
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicates in {list:?}");
        }
        for tag in TAGS {
            assert!(tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit()));
        }
    }
}
