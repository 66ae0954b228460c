//! Demo data: [`seed`] inserts a realistic data set, [`simulate`] keeps it moving.

pub mod seed;
pub mod simulate;

/// A sport of the demo data set: how its events are named, priced and played.
pub(crate) struct DemoSport {
    /// Stored in `events.sport`; `None` for esports titles stored without a sport.
    pub sport: Option<&'static str>,
    pub is_esports: bool,
    pub leagues: &'static [&'static str],
    pub teams: &'static [&'static str],
    /// Outcome names in display order.
    pub outcomes: &'static [&'static str],
    /// Minutes of play before a live event finishes.
    pub minutes: u32,
    /// Minutes per period, and the period label prefix (`Q` → Q1, Q2 ...).
    pub period: (u32, &'static str),
}

pub(crate) const SPORTS: &[DemoSport] = &[
    DemoSport {
        sport: Some("Football"),
        is_esports: false,
        leagues: &[
            "Premier League",
            "La Liga",
            "Serie A",
            "Bundesliga",
            "Champions League",
        ],
        teams: &[
            "Arsenal",
            "Chelsea",
            "Liverpool",
            "Manchester City",
            "Tottenham",
            "Newcastle",
            "Real Madrid",
            "Barcelona",
            "Atletico Madrid",
            "Sevilla",
            "Juventus",
            "Inter",
            "AC Milan",
            "Napoli",
            "Bayern Munich",
            "Dortmund",
            "Leipzig",
            "Leverkusen",
        ],
        outcomes: &["HOME", "DRAW", "AWAY"],
        minutes: 90,
        period: (45, "H"),
    },
    DemoSport {
        sport: Some("Basketball"),
        is_esports: false,
        leagues: &["NBA", "EuroLeague"],
        teams: &[
            "Lakers",
            "Celtics",
            "Warriors",
            "Bucks",
            "Nuggets",
            "Heat",
            "Suns",
            "Knicks",
            "Real Madrid Baloncesto",
            "Olympiacos",
            "Fenerbahce",
            "Panathinaikos",
        ],
        outcomes: &["YES", "NO"],
        minutes: 48,
        period: (12, "Q"),
    },
    DemoSport {
        sport: Some("Tennis"),
        is_esports: false,
        leagues: &["ATP Finals", "WTA Finals"],
        teams: &[
            "Sinner",
            "Alcaraz",
            "Djokovic",
            "Zverev",
            "Medvedev",
            "Rune",
            "Sabalenka",
            "Swiatek",
            "Gauff",
            "Rybakina",
            "Pegula",
            "Zheng",
        ],
        outcomes: &["YES", "NO"],
        minutes: 120,
        period: (40, "Set "),
    },
    DemoSport {
        sport: Some("Ice Hockey"),
        is_esports: false,
        leagues: &["NHL"],
        teams: &[
            "Rangers",
            "Bruins",
            "Oilers",
            "Maple Leafs",
            "Avalanche",
            "Panthers",
            "Stars",
            "Kings",
        ],
        outcomes: &["HOME", "DRAW", "AWAY"],
        minutes: 60,
        period: (20, "P"),
    },
    DemoSport {
        sport: Some("American Football"),
        is_esports: false,
        leagues: &["NFL"],
        teams: &[
            "Chiefs", "Eagles", "49ers", "Ravens", "Bills", "Lions", "Cowboys", "Packers",
        ],
        outcomes: &["YES", "NO"],
        minutes: 60,
        period: (15, "Q"),
    },
    DemoSport {
        sport: None,
        is_esports: true,
        leagues: &[
            "CS2 Major",
            "LoL Worlds",
            "Dota 2 International",
            "Valorant Champions",
        ],
        teams: &[
            "NaVi",
            "FaZe",
            "Vitality",
            "G2",
            "T1",
            "Gen.G",
            "Team Liquid",
            "Fnatic",
            "Team Spirit",
            "Cloud9",
            "Sentinels",
            "Heroic",
        ],
        outcomes: &["YES", "NO"],
        minutes: 60,
        period: (20, "Map "),
    },
];

/// Random external prices for `n` outcomes that sum to about 1.03, like a real order book
/// with a spread; the hybrid formula normalises them.
pub(crate) fn random_prices(rng: &mut impl rand::Rng, n: usize) -> Vec<f64> {
    let weights: Vec<f64> = (0..n).map(|_| rng.random_range(0.15..1.0)).collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| ((w / total) * 1.03).clamp(0.01, 0.99))
        .map(|p| (p * 1000.0).round() / 1000.0)
        .collect()
}

/// The period label for `minute` of play.
pub(crate) fn period_label(sport: &DemoSport, minute: u32) -> String {
    let (length, prefix) = sport.period;
    let index = (minute / length.max(1)) + 1;
    let count = sport.minutes.div_ceil(length.max(1));
    format!("{prefix}{}", index.min(count))
}
