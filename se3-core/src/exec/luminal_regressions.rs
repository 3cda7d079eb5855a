//! Regression tests for the luminal 0.2 faults that se3 routes around. Each test asserts the
//! faulty behaviour of the stock path (so a luminal upgrade that changes it fails here and
//! tells us to revisit the workaround) and the correct behaviour of ours.

use std::panic::{catch_unwind, AssertUnwindSafe};

use luminal::prelude::{symbolic::Expression, *};

use super::{InputKind, Session};
use crate::Error;

/// Runs `f` on a fresh boxed graph (luminal graphs must not move once tensors exist).
fn stock<T>(f: impl FnOnce(&mut Graph) -> T) -> T {
    let mut g = Box::new(Graph::new());
    f(&mut g)
}

fn values<S: Shape>(t: GraphTensor<S>) -> Vec<f32> {
    t.data()
}

fn quiet_panics<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r
}

fn op_names(g: &Graph) -> Vec<String> {
    g.graph.node_weights().map(|o| format!("{o:?}")).collect()
}

#[test]
fn stock_matmul_passes_do_not_fire_for_2d_and_batched_products() {
    let names = stock(|cx| {
        let a = cx.tensor::<R2<4, 5>>().set(vec![1.0; 20]);
        let b = cx.tensor::<R2<5, 6>>().set(vec![1.0; 30]);
        let p = cx.tensor::<R3<2, 4, 5>>().set(vec![1.0; 40]);
        let q = cx.tensor::<R3<2, 5, 6>>().set(vec![1.0; 60]);
        let mut outs = vec![
            a.matmul(b).retrieve().no_shape(),
            p.matmul(q).retrieve().no_shape(),
        ];
        cx.compile(<(GenericCompiler, CPUCompiler)>::default(), &mut outs);
        op_names(cx)
    });
    assert!(
        !names.iter().any(|n| n.contains("MatMul")),
        "a stock matmul pass fired now: {names:?}"
    );
    let mut s = Session::new();
    let a = s.input::<(Const<4>, Const<5>)>("a", InputKind::Values);
    let b = s.input::<(Const<5>, Const<6>)>("b", InputKind::Values);
    let p = s.input::<(Const<2>, Const<4>, Const<5>)>("p", InputKind::Values);
    let q = s.input::<(Const<2>, Const<5>, Const<6>)>("q", InputKind::Values);
    s.output("ab", a.matmul(b));
    s.output("pq", p.matmul(q));
    s.compile();
    assert_eq!(
        s.op_names()
            .iter()
            .filter(|n| n.as_str() == "MatMul")
            .count(),
        2
    );
}

#[test]
fn stock_cpu_compiler_panics_on_a_retrieved_arange() -> Result<(), Error> {
    let r = quiet_panics(|| {
        stock(|cx| {
            let mut a = cx.arange::<Const<5>>().retrieve();
            cx.compile(<(GenericCompiler, CPUCompiler)>::default(), &mut a);
            cx.execute();
            values(a)
        })
    });
    assert!(r.is_err(), "stock arange no longer panics: {r:?}");
    let mut s = Session::new();
    let a = s.graph().arange::<Const<5>>();
    s.output("a", a);
    s.run()?;
    assert_eq!(s.get("a")?.data, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    Ok(())
}

#[test]
fn stock_gather_is_one_hot_and_wrong_under_cpu_compiler() -> Result<(), Error> {
    let table: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let idx = vec![2.0, 0.0, 3.0];
    let (got, widest) = stock(|cx| {
        let t = cx.tensor::<R2<4, 3>>().set(table.clone());
        let i = cx.tensor::<R1<3>>().set(idx.clone());
        let mut g = t.gather(i).retrieve();
        let widest = cx
            .graph
            .edge_weights()
            .filter_map(|e| e.as_data())
            .map(|(_, _, st)| st.len())
            .max()
            .unwrap_or(0);
        cx.compile(<(GenericCompiler, CPUCompiler)>::default(), &mut g);
        cx.execute();
        (values(g), widest)
    });
    let want: Vec<f32> = vec![6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 9.0, 10.0, 11.0];
    assert_eq!(
        widest, 3,
        "stock gather no longer builds an (E, N, C) one-hot product"
    );
    assert_ne!(got, want, "stock gather is correct now: revisit");
    let mut s = Session::new();
    let t = s.input::<(Const<4>, Const<3>)>("t", InputKind::Values);
    let i = s.input::<(Const<3>,)>("i", InputKind::Values);
    s.output("g", crate::ops::gather(t, i));
    s.set("t", table, &[4, 3])?;
    s.set("i", idx, &[3])?;
    s.run()?;
    assert_eq!(s.get("g")?.data, want);
    Ok(())
}

#[test]
fn stock_concat_of_a_middle_slice_is_wrong_and_contiguous_first_fixes_it() -> Result<(), Error> {
    let got = stock(|cx| {
        let a = cx.tensor::<R1<4>>().set(vec![0.0, 1.0, 2.0, 3.0]);
        let b = cx.tensor::<R1<2>>().set(vec![9.0, 9.0]);
        let mid = a
            .slice((Expression::from(1)..Expression::from(3),))
            .realize::<(Const<2>,)>();
        let c = mid.concat_along::<(Const<4>,), Axis<0>, _>(b).retrieve();
        cx.execute();
        values(c)
    });
    assert_ne!(
        got,
        vec![1.0, 2.0, 9.0, 9.0],
        "stock middle-slice concat is correct now"
    );
    let mut s = Session::new();
    let a = s.input::<(Const<4>,)>("a", InputKind::Values);
    let b = s.input::<(Const<2>,)>("b", InputKind::Values);
    let mid = a
        .slice((Expression::from(1)..Expression::from(3),))
        .realize::<(Const<2>,)>()
        .contiguous();
    s.output("c", mid.concat_along::<(Const<4>,), Axis<0>, _>(b));
    s.set("a", vec![0.0, 1.0, 2.0, 3.0], &[4])?;
    s.set("b", vec![9.0, 9.0], &[2])?;
    s.run()?;
    assert_eq!(s.get("c")?.data, vec![1.0, 2.0, 9.0, 9.0]);
    Ok(())
}

#[test]
fn stock_unary_on_a_padded_view_leaves_zeros_and_contiguous_first_fixes_it() -> Result<(), Error> {
    let got = stock(|cx| {
        let a = cx.tensor::<R1<2>>().set(vec![1.0, 2.0]);
        let p = a.pad::<(Const<4>,), _, _>(&[(0, 2)]).exp2().retrieve();
        cx.execute();
        values(p)
    });
    assert_eq!(
        got,
        vec![2.0, 4.0, 0.0, 0.0],
        "stock exp2 over padding changed"
    );
    let mut s = Session::new();
    let a = s.input::<(Const<2>,)>("a", InputKind::Values);
    s.output(
        "p",
        a.pad::<(Const<4>,), _, _>(&[(0, 2)]).contiguous().exp2(),
    );
    s.set("a", vec![1.0, 2.0], &[2])?;
    s.run()?;
    assert_eq!(s.get("p")?.data, vec![2.0, 4.0, 1.0, 1.0]);
    Ok(())
}

#[test]
fn stock_pow_loses_the_sign_and_products_keep_it() -> Result<(), Error> {
    let got = stock(|cx| {
        let a = cx.tensor::<R1<1>>().set(vec![-2.0]);
        let p = a.pow(3.0).retrieve();
        cx.execute();
        values(p)
    });
    assert!((got[0] - 8.0).abs() < 1e-4, "stock (-2)^3 is now {got:?}");
    let mut s = Session::new();
    let a = s.input::<(Const<1>,)>("a", InputKind::Values);
    s.output("p", a * a * a);
    s.set("a", vec![-2.0], &[1])?;
    s.run()?;
    assert_eq!(s.get("p")?.data, vec![-8.0]);
    Ok(())
}

#[test]
fn stock_shape_trackers_hold_at_most_six_dims() {
    let r = quiet_panics(|| ShapeTracker::new(&[Expression::from(1); 7]));
    assert!(r.is_err(), "ShapeTracker now holds 7 dims");
    assert!(quiet_panics(|| ShapeTracker::new(&[Expression::from(1); 6])).is_ok());
}

#[test]
fn stock_retrieved_outputs_come_back_stale_and_sessions_are_fresh() -> Result<(), Error> {
    let got = stock(|cx| {
        let a = cx.tensor::<R1<2>>().set(vec![1.0, 2.0]);
        let b = (a * 2.0).retrieve();
        cx.execute();
        let first = values(b);
        a.set(vec![5.0, 6.0]);
        cx.execute();
        (first, values(b))
    });
    assert_eq!(
        got.0, got.1,
        "stock outputs are no longer stale across executes"
    );
    let mut s = Session::new();
    let a = s.input::<(Const<2>,)>("a", InputKind::Values);
    s.output("b", a * 2.0);
    for v in [1.0, 5.0] {
        s.set("a", vec![v, v + 1.0], &[2])?;
        s.run()?;
        assert_eq!(s.get("b")?.data, vec![2.0 * v, 2.0 * v + 2.0]);
    }
    Ok(())
}

#[test]
fn stock_nodes_added_after_execute_never_run_and_sessions_schedule_them() -> Result<(), Error> {
    let ran = stock(|cx| {
        let a = cx.tensor::<R1<2>>().set(vec![1.0, 2.0]).keep();
        let b = (a * 2.0).retrieve();
        cx.execute();
        let c = (b * 3.0).retrieve();
        cx.execute();
        cx.get_tensor_ref(c.id, 0).is_some()
    });
    assert!(!ran, "stock graphs now schedule nodes added after execute");
    let mut s = Session::new();
    let a = s.input::<(Const<2>,)>("a", InputKind::Values);
    let b = a * 2.0;
    s.output("b", b);
    s.set("a", vec![1.0, 2.0], &[2])?;
    s.run()?;
    s.output("c", b * 3.0);
    s.set("a", vec![1.0, 2.0], &[2])?;
    s.run()?;
    assert_eq!(s.get("c")?.data, vec![6.0, 12.0]);
    Ok(())
}

fn make_session() -> (Session, GraphTensor<(Const<2>,)>) {
    let mut s = Session::new();
    let a = s.input::<(Const<2>,)>("a", InputKind::Values);
    s.output("b", a + 1.0);
    (s, a)
}

#[test]
fn sessions_move_freely_because_the_graph_is_boxed() -> Result<(), Error> {
    // Stock: a GraphTensor points at the Graph's address, so moving a Graph value would leave
    // it dangling; the Session keeps the Graph in a Box, whose address never changes.
    let (s, a) = make_session();
    let mut moved = Box::new(s);
    let s = &mut *moved;
    assert!(std::ptr::eq(a.graph_ref, s.graph() as *mut Graph));
    s.set("a", vec![1.0, 2.0], &[2])?;
    s.run()?;
    assert_eq!(s.get("b")?.data, vec![2.0, 3.0]);
    Ok(())
}

#[test]
fn stock_safetensors_loader_panics_at_execute_on_a_missing_key_or_f64() {
    use luminal::nn::linear::Linear;
    let dir = std::env::temp_dir().join(format!("se3-regress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok();
    let path = dir.join("w.safetensors");
    let bytes = {
        let data: Vec<u8> = [0.5f64; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2, 3], &data)
            .expect("view");
        safetensors::serialize(vec![("other", view)], &None).expect("serialize")
    };
    std::fs::write(&path, &bytes).expect("write temp file");
    let p = path.to_string_lossy().to_string();
    let r = quiet_panics(|| {
        stock(|cx| {
            let model = Linear::<2, 3>::initialize(cx);
            let x = cx.tensor::<R1<2>>().set(vec![1.0, 1.0]);
            let y = model.forward(x).retrieve();
            SafeTensorLoader::new(std::slice::from_ref(&p)).load(&model, cx);
            cx.execute();
            values(y)
        })
    });
    assert!(r.is_err(), "stock loader no longer panics on a missing key");
    // Ours: a typed error at load time, and f64 is accepted.
    let mut s = Session::new();
    let w = s.weight::<(Const<2>, Const<3>)>("weight");
    s.output("w", w * 1.0);
    assert!(
        matches!(s.load_safetensors(&path), Err(Error::MissingKey { ref key, .. }) if key == "weight")
    );
    let mut s = Session::new();
    let w = s.weight::<(Const<2>, Const<3>)>("other");
    s.output("w", w * 1.0);
    assert!(s.load_safetensors(&path).is_ok());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stock_contiguous_of_an_open_ended_slice_of_a_dynamic_axis_keeps_the_unsliced_length(
) -> Result<(), Error> {
    let len = stock(|cx| {
        let a = cx.tensor::<(Dyn<'n'>,)>();
        let mut st = a.slice((Expression::from(1)..,)).contiguous().shape;
        let mut dims = rustc_hash::FxHashMap::default();
        dims.insert('n', 4usize);
        st.resolve_global_dyn_dims(&dims);
        st.n_elements().to_usize()
    });
    assert_eq!(
        len,
        Some(4),
        "open-ended slice + contiguous on a Dyn axis changed"
    );
    // Ours: slice with an explicit end.
    let mut s = Session::new();
    let a = s.input::<(Dyn<'n'>,)>("a", InputKind::Values);
    let c = a
        .slice((Expression::from(1)..Expression::from('n'),))
        .contiguous();
    s.output("c", c);
    s.set("a", vec![0.0, 1.0, 2.0, 3.0], &[4])?;
    s.run()?;
    assert_eq!(s.get("c")?.data, vec![1.0, 2.0, 3.0]);
    Ok(())
}

#[test]
fn stock_reduce_over_a_permuted_view_scrambles_its_output_and_ours_does_not() -> Result<(), Error> {
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let mut want = vec![];
    for c in 0..4 {
        for b in 0..3 {
            want.push((0..2).map(|a| x[(a * 3 + b) * 4 + c]).sum::<f32>());
        }
    }
    let got = stock(|cx| {
        let t = cx.tensor::<R3<2, 3, 4>>().set(x.clone());
        let p = t
            .permute::<R3<4, 3, 2>, _>()
            .sum_reduce::<R2<4, 3>, _>()
            .retrieve();
        cx.execute();
        values(p)
    });
    assert_ne!(
        got, want,
        "stock reduce over a permuted view is correct now: revisit"
    );
    let mut s = Session::new();
    let t = s.input::<(Const<2>, Const<3>, Const<4>)>("x", InputKind::Values);
    let p = t.permute::<(Const<4>, Const<3>, Const<2>), _>();
    s.output("sum", p.sum_reduce::<(Const<4>, Const<3>), _>());
    s.output("max_plus", p.max_reduce::<(Const<4>, Const<3>), _>() + 1.0);
    s.set("x", x.clone(), &[2, 3, 4])?;
    s.run()?;
    assert_eq!(s.get("sum")?.data, want);
    let mut want_max = vec![];
    for c in 0..4 {
        for b in 0..3 {
            want_max.push(
                (0..2)
                    .map(|a| x[(a * 3 + b) * 4 + c])
                    .fold(f32::MIN, f32::max)
                    + 1.0,
            );
        }
    }
    assert_eq!(s.get("max_plus")?.data, want_max);
    Ok(())
}
