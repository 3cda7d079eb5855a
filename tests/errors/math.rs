//! Bad input to the SO(3) math and bases: NaN/inf vectors, zero vectors where a direction is
//! needed, invalid Clebsch-Gordan triples, degrees above the maximum, non-rotations.

use nalgebra::{Matrix3, Rotation3, Vector3};
use se3_core::basis::{
    cosine_cutoff, equiformer_zbasis, fourier_encode, q_j, BesselBasis, GaussianBasis, KernelBasis,
    QjPrecision,
};
use se3_core::so3::spherical_harmonics::spherical_harmonics_batch_into;
use se3_core::so3::{
    clebsch_gordan, equiformer_edge_rotation, equiformer_edge_wigner_d, sh_polynomial,
    spherical_harmonics, spherical_harmonics_batch, spherical_harmonics_batch_f32,
    spherical_harmonics_grad, spherical_harmonics_grad_batch, wigner_d, wigner_d_all,
    wigner_d_from_euler, wigner_d_from_matrix, wigner_d_o3, Convention, Normalization, Parity,
    L_MAX,
};
use se3_core::Error;

const E3NN: (Convention, Normalization) = (Convention::E3nn, Normalization::Component);

#[test]
fn nan_and_infinite_vectors_are_non_finite_errors() -> Result<(), Error> {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let v = Vector3::new(0.5, bad, 1.0);
        assert!(matches!(
            spherical_harmonics(3, &v, E3NN.0, E3NN.1),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            spherical_harmonics_grad(3, &v, E3NN.0, E3NN.1),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            equiformer_edge_rotation(&v),
            Err(Error::NonFinite { .. })
        ));
    }
    // Batches name the offending vector.
    let vs = [[0.0, 1.0, 0.0], [1.0, 2.0, 3.0], [f64::NAN, 0.0, 0.0]];
    assert!(matches!(
        spherical_harmonics_batch(2, &vs, E3NN.0, E3NN.1),
        Err(Error::NonFinite { index: 2, .. })
    ));
    let vs32 = [[f32::INFINITY, 0.0, 0.0]];
    assert!(matches!(
        spherical_harmonics_batch_f32(2, &vs32, E3NN.0, E3NN.1),
        Err(Error::NonFinite { index: 0, .. })
    ));
    let kb = KernelBasis::new(2, QjPrecision::Exact)?;
    assert!(matches!(
        kb.compute(&[[1.0, 0.0, 0.0], [0.0, f64::NAN, 0.0]]),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        wigner_d_from_euler(2, 0.1, f64::NAN, 0.3),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        fourier_encode(f64::INFINITY, 3, true),
        Err(Error::NonFinite { .. })
    ));
    let nan_rotation = Rotation3::from_matrix_unchecked(Matrix3::from_element(f64::NAN));
    assert!(matches!(
        wigner_d(1, &nan_rotation),
        Err(Error::NonFinite { .. })
    ));
    Ok(())
}

#[test]
fn zero_vector_where_a_direction_is_needed_is_an_error() {
    let zero = Vector3::zeros();
    assert!(matches!(
        spherical_harmonics_grad(
            2,
            &zero,
            Convention::Se3TransformerPytorch,
            Normalization::Integral
        ),
        Err(Error::ZeroVector { .. })
    ));
    assert!(matches!(
        equiformer_edge_rotation(&zero),
        Err(Error::ZeroVector { .. })
    ));
    assert!(matches!(
        spherical_harmonics_grad_batch(
            3,
            &[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
            Convention::E3nn,
            Normalization::Component
        ),
        Err(Error::ZeroVector { index: 1, .. })
    ));
    assert!(matches!(
        equiformer_edge_wigner_d(1, &zero),
        Err(Error::ZeroVector { .. })
    ));
}

#[test]
fn invalid_clebsch_gordan_triples_break_the_selection_rule() {
    for (l1, l2, j) in [(1, 1, 3), (0, 2, 1), (3, 1, 1), (4, 4, 9)] {
        assert!(
            matches!(clebsch_gordan(l1, l2, j), Err(Error::SelectionRule { .. })),
            "({l1}, {l2}, {j})"
        );
    }
    assert!(matches!(
        q_j(4, 1, 1, QjPrecision::Exact),
        Err(Error::SelectionRule { .. })
    ));
}

#[test]
fn degrees_above_the_maximum_are_degree_too_high() {
    let v = Vector3::new(0.1, 0.2, 0.3);
    let r = Rotation3::identity();
    let too_high = L_MAX + 1;
    assert!(matches!(
        spherical_harmonics(too_high, &v, E3NN.0, E3NN.1),
        Err(Error::DegreeTooHigh { l, max }) if l == too_high && max == L_MAX
    ));
    assert!(matches!(
        spherical_harmonics_batch(too_high, &[[1.0, 0.0, 0.0]], E3NN.0, E3NN.1),
        Err(Error::DegreeTooHigh { .. })
    ));
    assert!(matches!(
        wigner_d(too_high, &r),
        Err(Error::DegreeTooHigh { .. })
    ));
    assert!(matches!(
        wigner_d_all(too_high, &r),
        Err(Error::DegreeTooHigh { .. })
    ));
    assert!(matches!(
        clebsch_gordan(too_high, too_high, 0),
        Err(Error::DegreeTooHigh { .. })
    ));
    assert!(matches!(
        KernelBasis::new(L_MAX / 2 + 1, QjPrecision::Exact),
        Err(Error::DegreeTooHigh { .. })
    ));
    assert!(matches!(
        sh_polynomial(too_high, 0, E3NN.0, E3NN.1),
        Err(Error::DegreeTooHigh { .. })
    ));
}

#[test]
fn non_rotations_are_rejected() {
    let sheared = Matrix3::new(1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0);
    assert!(matches!(
        wigner_d_from_matrix(2, &sheared),
        Err(Error::NotARotation { .. })
    ));
    assert!(matches!(
        wigner_d_from_matrix(2, &-Matrix3::identity()),
        Err(Error::NotARotation { .. })
    ));
    assert!(matches!(
        wigner_d_o3(2, Parity::Odd, &(2.0 * Matrix3::identity())),
        Err(Error::NotARotation { .. })
    ));
    let nan = Matrix3::new(f64::NAN, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0);
    assert!(matches!(
        wigner_d_o3(1, Parity::Even, &nan),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn other_bad_arguments_are_typed() {
    let mut short = vec![0.0; 3];
    assert!(matches!(
        spherical_harmonics_batch_into(1, &[[1.0, 0.0, 0.0]], E3NN.0, E3NN.1, &mut short),
        Err(Error::LengthMismatch {
            expected: 4,
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        sh_polynomial(2, 3, E3NN.0, E3NN.1),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        equiformer_zbasis(0, 2, QjPrecision::Exact),
        Err(Error::NotTabulated { .. })
    ));
    assert!(matches!(
        BesselBasis::new(-1.0, 8, 5),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        GaussianBasis::new(1.0, 1.0, 8, 1.0),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        cosine_cutoff(-0.5, 1.0),
        Err(Error::InvalidParameter { .. })
    ));
}
