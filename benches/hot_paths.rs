//! The hot paths of one stencil run, each on its own (criterion): place,
//! patch, the static judge, and a whole Unicorn run. `stencilcheck bench`
//! gives the same split over a whole input as runs/s; this is for watching
//! one path while changing it (`cargo bench --bench hot_paths -- unicorn`).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use stencilcheck::model::{Stencil, StencilSet};
use stencilcheck::patch::{self, Ports};
use stencilcheck::{execute, judge, place};

/// The embedded x86-64 corpus and its stencil with the most holes.
fn corpus() -> (StencilSet, usize) {
    let set = stencilcheck::corpus::load().expect("the embedded corpus loads");
    let (busiest, _) =
        set.stencils.iter().enumerate().max_by_key(|(_, s)| s.holes().count()).expect("the corpus has stencils");
    (set, busiest)
}

fn placed(set: &StencilSet, stencil: &Stencil, index: u32) -> place::Placement {
    place::place(set.target, stencil, 1, index)
        .expect("places")
        .with_functions(&place::function_externs(set.target, stencil))
}

fn hot_paths(c: &mut Criterion) {
    let (set, busiest) = corpus();
    let stencil = &set.stencils[busiest];
    let placement = placed(&set, stencil, 0);
    let image = patch::emit(stencil, &placement, &Ports).expect("patches");
    let mut index = 0;
    c.bench_function("place", |b| {
        b.iter(|| {
            index += 1;
            black_box(place::place(set.target, stencil, 1, index).expect("places"))
        })
    });
    c.bench_function("patch", |b| b.iter(|| black_box(patch::emit(stencil, &placement, &Ports).expect("patches"))));
    c.bench_function("static judge", |b| {
        b.iter(|| {
            let sites = set.target.info().static_sites(stencil, &image);
            black_box(judge::judge_sites(set.target, stencil, &placement, &image, &sites))
        })
    });
    let convention = set.target.convention(&set);
    let mut engine = set.target.engine(convention, execute::DEFAULT_INSTRUCTION_LIMIT).expect("an engine");
    c.bench_function("unicorn run", |b| b.iter(|| black_box(engine.run(stencil, &placement, &image))));
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
