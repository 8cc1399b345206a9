use stencilcheck::execute::Engine;
#[test]
fn timing() {
    let set = stencilcheck::load::load_path(std::path::Path::new("/tmp/cpython-stencils/3.13.5/x86_64-unknown-linux-gnu/jit_stencils.h")).unwrap();
    let conv = set.target.convention(&set);
    let mut native = stencilcheck::execute::native::NativeEngine::new(conv.clone(), 200_000).unwrap();
    let mut work = Vec::new();
    for s in set.stencils.iter().filter(|s| !s.code.is_empty()) {
        let f = stencilcheck::place::function_externs(set.target, s);
        for i in 0..16 {
            let p = stencilcheck::place::place(set.target, s, 1, i).unwrap().with_functions(&f);
            if let Ok(img) = stencilcheck::patch::emit(s, &p, &stencilcheck::patch::Ports) { work.push((s, p, img)); }
        }
    }
    let mut slow = Vec::new();
    let t = std::time::Instant::now();
    for (s, p, img) in &work {
        let before = native.stats().fallbacks();
        let t1 = std::time::Instant::now();
        let _ = native.run(s, p, img);
        let d = t1.elapsed();
        slow.push((d, s.name.clone(), native.stats().fallbacks() > before));
    }
    let total = t.elapsed();
    let fb: std::time::Duration = slow.iter().filter(|x| x.2).map(|x| x.0).sum();
    let nat: Vec<_> = slow.iter().filter(|x| !x.2).map(|x| x.0).collect();
    let mut sorted = nat.clone(); sorted.sort();
    eprintln!("runs {} total {:?}; fallback time {:?}; native {} runs {:?}, median {:?}, p90 {:?}, max {:?}", work.len(), total, fb, nat.len(), nat.iter().sum::<std::time::Duration>(), sorted[sorted.len()/2], sorted[sorted.len()*9/10], sorted.last().unwrap());
    slow.sort(); for x in slow.iter().rev().take(8) { eprintln!("{:?} {} fallback={}", x.0, x.1, x.2); }
}
