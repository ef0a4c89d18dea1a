# Regenerate the R outputs in tests/data/mr_reference.json (author tool; not run in CI).
#
#   Rscript tools/make_mr_reference.R tests/data/mr_reference.json /path/to/TwoSampleMR > new.json
#
# Reads the datasets block of the existing file (package example data, copied with their
# sources, see tests/data/README.md) and recomputes every "computed_outputs" block with the
# versions the tests were written against:
#   R 4.2.2, MendelianRandomization 0.10.0, metafor 3.8-1 (+ metadat 1.2-0),
#   TwoSampleMR 0.7.9 (github MRCIEU/TwoSampleMR @c14776b; R/mr.R, R/mr_mode.R, R/rucker.R
#   are sourced, so the package and its database access are not needed), jsonlite.
# Bootstrap SEs (median, mode) depend on R's RNG stream; the seeds are the ones named in the
# block keys. Compare the output with the committed file, e.g. in Python:
#   json.load(open("new.json"))["computed_outputs"] vs the committed "computed_outputs".

suppressPackageStartupMessages({
  library(jsonlite)
  library(MendelianRandomization)
  library(metafor)
})

args <- commandArgs(trailingOnly = TRUE)
if (length(args) < 2) stop("usage: make_mr_reference.R REFERENCE_JSON TWOSAMPLEMR_SOURCE_DIR")
ref <- fromJSON(args[[1]], simplifyVector = TRUE)
for (f in c("mr.R", "mr_mode.R", "rucker.R")) source(file.path(args[[2]], "R", f))

slots <- function(obj) {
  out <- lapply(slotNames(obj), function(s) slot(obj, s))
  names(out) <- slotNames(obj)
  out
}

lip <- ref$datasets$waterworth_lipids_chd_28
mr_in <- function(exposure, idx = seq_along(lip$chdlodds)) {
  mr_input(bx = lip[[exposure]][idx], bxse = lip[[paste0(exposure, "se")]][idx],
           by = lip$chdlodds[idx], byse = lip$chdloddsse[idx])
}

# --------------------------------------------------------------- MendelianRandomization 0.10.0
mrpkg_block <- function(inp, full = TRUE) {
  b <- list(
    ivw_default = slots(mr_ivw(inp)),
    ivw_fixed = slots(mr_ivw(inp, model = "fixed")),
    egger_default = slots(mr_egger(inp)),
    egger_tdist = slots(mr_egger(inp, distribution = "t-dist")),
    median_weighted = slots(mr_median(inp, weighting = "weighted", seed = 314159265)),
    median_simple = slots(mr_median(inp, weighting = "simple", seed = 314159265)),
    mbe_weighted_delta = slots(mr_mbe(inp, weighting = "weighted", stderror = "delta", seed = 314159265)),
    maxlik_default = slots(mr_maxlik(inp))
  )
  if (full) {
    b <- c(b, list(
      ivw_random = slots(mr_ivw(inp, model = "random")),
      ivw_random_tdist = slots(mr_ivw(inp, model = "random", distribution = "t-dist")),
      ivw_delta_random = slots(mr_ivw(inp, weights = "delta", model = "random")),
      ivw_delta_fixed = slots(mr_ivw(inp, weights = "delta", model = "fixed")),
      ivw_robust = slots(mr_ivw(inp, robust = TRUE)),
      ivw_penalized = slots(mr_ivw(inp, penalized = TRUE)),
      `ivw_alpha_0.1` = slots(mr_ivw(inp, alpha = 0.1)),
      egger_robust = slots(mr_egger(inp, robust = TRUE)),
      egger_penalized = slots(mr_egger(inp, penalized = TRUE)),
      median_penalized = slots(mr_median(inp, weighting = "penalized", seed = 314159265)),
      mbe_weighted_simple = slots(mr_mbe(inp, weighting = "weighted", stderror = "simple", seed = 314159265)),
      mbe_unweighted_delta = slots(mr_mbe(inp, weighting = "unweighted", stderror = "delta", seed = 314159265)),
      mbe_unweighted_simple = slots(mr_mbe(inp, weighting = "unweighted", stderror = "simple", seed = 314159265)),
      maxlik_fixed = slots(mr_maxlik(inp, model = "fixed")),
      conmix_default = slots(mr_conmix(inp)),
      lasso_default = slots(mr_lasso(inp)),
      divw_default = slots(mr_divw(inp))
    ))
  }
  b
}

first3 <- mr_in("ldlc", 1:3)
mrpkg <- list(
  ldlc_chd = mrpkg_block(mr_in("ldlc")),
  hdlc_chd = mrpkg_block(mr_in("hdlc"), full = FALSE),
  trig_chd = mrpkg_block(mr_in("trig"), full = FALSE),
  ldlc_chd_first3 = list(ivw_default = slots(mr_ivw(first3)), ivw_random = slots(mr_ivw(first3, model = "random")),
                         egger_default = slots(mr_egger(first3))),
  ldlc_chd_first1 = list(ivw_simple = slots(mr_ivw(mr_in("ldlc", 1))),
                         ivw_delta = slots(mr_ivw(mr_in("ldlc", 1), weights = "delta"))),
  ldlc_chd_snp9 = list(ivw_simple = slots(mr_ivw(mr_in("ldlc", 9))),
                       ivw_delta = slots(mr_ivw(mr_in("ldlc", 9), weights = "delta")))
)

bmi <- ref$datasets$twosamplemr_bmi_chd_79
bmi_in <- mr_input(bx = bmi$bx, bxse = bmi$bxse, by = bmi$by, byse = bmi$byse)
mrpkg_bmi <- list(
  ivw = slots(mr_ivw(bmi_in)), ivw_fixed = slots(mr_ivw(bmi_in, model = "fixed")),
  egger = slots(mr_egger(bmi_in)), egger_tdist = slots(mr_egger(bmi_in, distribution = "t-dist")),
  median_weighted = slots(mr_median(bmi_in, weighting = "weighted", seed = 314159265)),
  median_simple = slots(mr_median(bmi_in, weighting = "simple", seed = 314159265)),
  mbe = slots(mr_mbe(bmi_in, seed = 314159265)),
  mbe_unweighted = slots(mr_mbe(bmi_in, weighting = "unweighted", seed = 314159265)),
  maxlik = slots(mr_maxlik(bmi_in)), conmix = slots(mr_conmix(bmi_in))
)

# --------------------------------------------------------------- TwoSampleMR 0.7.9 functions
tsmr_block <- function(b_exp, b_out, se_exp, se_out) {
  p <- default_parameters()
  seeded <- function(f) { set.seed(1234); f(b_exp, b_out, se_exp, se_out, p) }
  list(
    mr_ivw = mr_ivw(b_exp, b_out, se_exp, se_out, p),
    mr_ivw_fe = mr_ivw_fe(b_exp, b_out, se_exp, se_out, p),
    mr_ivw_mre = mr_ivw_mre(b_exp, b_out, se_exp, se_out, p),
    mr_uwr = mr_uwr(b_exp, b_out, se_exp, se_out, p),
    mr_egger_regression = mr_egger_regression(b_exp, b_out, se_exp, se_out, p)[
      c("b", "se", "pval", "nsnp", "b_i", "se_i", "pval_i", "Q", "Q_df", "Q_pval")],
    mr_weighted_median_seed1234 = seeded(mr_weighted_median),
    mr_simple_median_seed1234 = seeded(mr_simple_median),
    mr_penalised_weighted_median_seed1234 = seeded(mr_penalised_weighted_median),
    mr_mode_all_seed1234 = { set.seed(1234); as.list(mr_mode(data.frame(beta.exposure = b_exp, beta.outcome = b_out,
                             se.exposure = se_exp, se.outcome = se_out), p, mode_method = "all")) },
    mr_two_sample_ml = mr_two_sample_ml(b_exp, b_out, se_exp, se_out, p),
    mr_sign = mr_sign(b_exp, b_out, se_exp, se_out, p),
    Isq_GX_unweighted_TwoSampleMR_convention = Isq(abs(b_exp), se_exp)
  )
}

tsmr <- list(
  ldlc_chd = tsmr_block(lip$ldlc, lip$chdlodds, lip$ldlcse, lip$chdloddsse),
  bmi_chd_ieu_a_2_vs_ieu_a_7 = tsmr_block(bmi$bx, bmi$by, bmi$bxse, bmi$byse)
)

# --------------------------------------------------------------- metafor 3.8-1
rma_fields <- function(fit) {
  list(estimate = as.numeric(fit$beta), se = fit$se, zval = fit$zval, pval = fit$pval, ci_lb = fit$ci.lb,
       ci_ub = fit$ci.ub, tau2 = fit$tau2, se_tau2 = fit$se.tau2, QE = fit$QE, QEp = fit$QEp, I2 = fit$I2,
       H2 = fit$H2, s2w = fit$s2w)
}
meta_block <- function(yi, vi, methods = c("DL", "REML", "ML", "PM", "HE", "SJ", "EB")) {
  out <- list(EE = rma_fields(rma(yi, vi, method = "EE")))
  for (m in methods) {
    out[[m]] <- rma_fields(rma(yi, vi, method = m))
    out[[paste0(m, "_knha")]] <- rma_fields(rma(yi, vi, method = m, test = "knha"))
    if (m %in% c("DL", "REML")) {
      out[[paste0(m, "_predict")]] <- as.list(as.data.frame(predict(rma(yi, vi, method = m))))
      ci <- confint(rma(yi, vi, method = m))$random
      out[[paste0(m, "_confint_Qprofile")]] <- as.list(as.data.frame(ci))
    }
  }
  out
}
bcg <- ref$datasets$metafor_dat_bcg
r85 <- ref$datasets$metafor_dat_raudenbush1985
clasp <- ref$datasets$clasp_dersimonian_kacker_2007
ratio <- lip$chdlodds / lip$ldlc
metafor_out <- list(
  metafor_version = as.character(packageVersion("metafor")),
  R_version = R.version.string,
  dat.bcg_RR = meta_block(bcg$RR$yi, bcg$RR$vi),
  dat.bcg_OR = meta_block(bcg$OR$yi, bcg$OR$vi, methods = c("DL", "REML")),
  dat.raudenbush1985 = meta_block(r85$yi, r85$vi, methods = c("DL", "REML", "ML", "HE", "PM")),
  CLASP_dersimonian2007 = meta_block(clasp$yi, clasp$vi, methods = c("DL", "REML", "ML", "PM", "HE", "SJ")),
  ldlc_chd_ratio_meta_first_order = meta_block(ratio, (lip$chdloddsse / abs(lip$ldlc))^2,
                                               methods = c("DL", "REML", "PM")),
  ldlc_chd_ratio_meta_second_order = meta_block(
    ratio, lip$chdloddsse^2 / lip$ldlc^2 + lip$chdlodds^2 * lip$ldlcse^2 / lip$ldlc^4, methods = c("DL", "REML", "PM"))
)

ref$computed_outputs[["MendelianRandomization_0.10.0"]][names(mrpkg)] <- mrpkg
ref$computed_outputs[["MendelianRandomization_0.10.0_on_bmi_chd_79"]][names(mrpkg_bmi)] <- mrpkg_bmi
ref$computed_outputs[["TwoSampleMR_0.7.9_functions"]][names(tsmr)] <- tsmr
ref$computed_outputs[["metafor_3.8-1"]][names(metafor_out)] <- metafor_out
cat(toJSON(ref, auto_unbox = TRUE, digits = NA, null = "null", na = "string", pretty = TRUE))
