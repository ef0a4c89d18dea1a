# The two commands of README.md. Both create the virtual environment on first use.
#   make book   execute every chapter at DEEPMR_SCALE=default (stored runs reused, see below) and build _build/html
#   make test   ruff + unit tests on every core (statistics twice, under two OpenBLAS core types) + the strict book
#               build at DEEPMR_SCALE=quick, whose chapters execute once, side by side, with the CPU's own kernels
#               (CAPPED_CHAPTERS=... runs chapters once more in the same pool with AVX2-capped kernels)
#               + every page checked in headless Chromium (skipped, with one line saying so, without it)
#   make pdf    the book as one PDF, _build/pdf/deepmr.pdf (from make book's execution cache: no second run)
#   make study  the simulation study: 50 rounds of each scenario (hours; resumable, extends the committed rounds)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
# The venv's bin first: notebook kernels ("python3") must start from the same environment.
export PATH := $(BIN):$(PATH)
# Progress bars belong in a terminal or an interactive session, not in a rendered page as stderr boxes.
BUILD_ENV := DEEPMR_PROGRESS=0

.PHONY: book test lint unit notebooks book-quick browser pdf bench study clean env

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "DeepMR needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet "pip>=23"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# make book and make pdf keep each chapter's run in a cache folder named by the scale and a hash of the library,
# the committed data, the DEEPMR_* settings and the pinned requirements (tools/book_cache.py): a prose edit reuses
# the stored runs, a change of code, library, data or setting reruns what it touches. The chapters' tables go
# into that folder too (they belong to the runs the pages show); make book copies them to results/. The chapters
# that the cache does not hold execute side by side first (tools/book_cache.py execute), then the book is built
BOOK_ENV := DEEPMR_SCALE=$${DEEPMR_SCALE:-default}
# a recipe's environment once its shell has set cfg to the cache's config (tables into the cache folder)
CACHED_ENV = $(BUILD_ENV) $(BOOK_ENV) DEEPMR_RESULTS=$(CURDIR)/$$(dirname $$cfg)/results

book: $(STAMP)
	rm -rf _build/html _build/.doctrees _build/jupyter_execute
	@cfg=$$($(BOOK_ENV) $(BIN)/python tools/book_cache.py config) && echo "execution cache: $$(dirname $$cfg)" && \
	$(CACHED_ENV) $(BIN)/python tools/book_cache.py execute $$cfg && \
	$(CACHED_ENV) $(BIN)/jupyter-book build . --keep-going --config $$cfg && \
	$(BIN)/python tools/book_cache.py publish $$(dirname $$cfg)/results
	@test -f _build/html/index.html
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: lint unit book-quick browser

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The statistics tests run twice: under the machine's own OpenBLAS kernels and under another core type
# (Haswell on an AVX-512 machine, whose own are SkylakeX; Prescott elsewhere), because round-off differs
# between kernels and a decision taken by exact float equality passes on one CPU and fails on the next.
STATS_TESTS := tests/test_mr.py tests/test_meta.py tests/test_uncertainty.py tests/test_instruments.py
OTHER_BLAS  := $(shell grep -q avx512f /proc/cpuinfo 2>/dev/null && echo Haswell || echo Prescott)
# make notebooks: oneDNN, MKL and OpenBLAS capped at AVX2 (the same cap as tools/book_cache.py's AVX2_CAP)
AVX2_CAP    := $(shell grep -q avx2 /proc/cpuinfo 2>/dev/null && \
	echo ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell)

# one pytest worker per core (pytest-xdist), each single-threaded: on few cores, processes side by side do more
# work than one process with threads, because much of a test's time is Python between small tensor operations.
# Tests are shared out one by one and an idle worker takes a busy one's (worksteal): by file, the CLI tests'
# file alone outlasted all the others (172 s against 147 s measured); a module fixture is then built at most
# once per worker
NPROC := $(shell nproc 2>/dev/null || echo 1)
ONE_THREAD := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

unit: $(STAMP)
	$(ONE_THREAD) $(BIN)/python -m pytest -q -n $(NPROC) --dist worksteal tests --ignore=tests/pages
	OPENBLAS_CORETYPE=$(OTHER_BLAS) $(BIN)/python -m pytest -q -p no:cacheprovider $(STATS_TESTS)

# make test never touches the user's book or results: it builds into _build/quick and writes tables to
# _build/quick/results (DEEPMR_RESULTS), so the output of `make book` survives it
QUICK := _build/quick

# The chapters execute once, side by side (one per core, tools/book_cache.py execute), into a fresh execution
# cache of this build; the strict build then takes them from it and executes only the pages that describe the
# build (raise_on_error: a failing cell or claim fails it). A chapter that failed is not cached: the build runs
# it again and fails on its error.
# CAPPED_CHAPTERS (none by default) run a second time in the same pool with oneDNN, MKL and OpenBLAS capped at
# AVX2, tables in $(QUICK)/results-avx2, and fail the target on any error: on a CPU with AVX-512, a check that
# their claims hold on an AVX2 CPU too (training's round-off differs between kernels; the DeepSEA chapter's
# claims once flipped between them). make test leaves it out: CI checks the CPU it runs on, and a second run of
# a chapter costs as much CPU as the first (the DeepSEA chapter's 260 s would put make test past 10 minutes).
# Before a chapter's claims or sizes change, check them across seeds and instruction sets with
# `tools/claims_matrix.py --isa native avx2`, or here with `make book-quick CAPPED_CHAPTERS=book/03_deepsea.ipynb`
# (on a CPU without AVX-512 the cap changes no oneDNN or MKL kernel, only OpenBLAS's core type)
CAPPED_CHAPTERS ?=
QUICK_ENV := $(BUILD_ENV) DEEPMR_SCALE=quick DEEPMR_RESULTS=$(CURDIR)/$(QUICK)/results
book-quick: $(STAMP)
	rm -rf $(QUICK)/_build $(QUICK)/cache $(QUICK)/results $(QUICK)/results-avx2
	@cfg=$$($(BIN)/python tools/book_cache.py config --cache $(QUICK)/cache) && \
	$(QUICK_ENV) $(BIN)/python tools/book_cache.py execute $$cfg \
		$(if $(strip $(CAPPED_CHAPTERS)),--capped $(CAPPED_CHAPTERS) --capped-results $(CURDIR)/$(QUICK)/results-avx2) && \
	$(QUICK_ENV) $(BIN)/jupyter-book build . -W -n --keep-going --path-output $(QUICK) --config $$cfg
	@test -f $(QUICK)/_build/html/index.html

# the chapters under nbval with AVX2-capped kernels, one after another (not part of make test):
# NBVAL_CHAPTERS=book/ for every chapter
NBVAL_CHAPTERS ?= book/03_deepsea.ipynb
notebooks: $(STAMP)
	$(BUILD_ENV) $(AVX2_CAP) DEEPMR_SCALE=quick DEEPMR_RESULTS=$(CURDIR)/$(QUICK)/results-avx2 $(BIN)/python -m pytest -q \
		-p no:cacheprovider --nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg $(NBVAL_CHAPTERS)

# every page of the quick build in headless Chromium: math typeset, figures present, no tracebacks or
# unexplained stderr, no remote request; screenshots and a per-page report in _build/screenshots.
# CI (CI=true) must run it; elsewhere a missing Chromium skips it with one line.
browser: $(STAMP)
	@if $(BIN)/python tools/browser.py --available; then \
		DEEPMR_HTML=$(CURDIR)/$(QUICK)/_build/html DEEPMR_SCREENSHOTS=$(CURDIR)/_build/screenshots \
			$(BIN)/python -m pytest -q -p no:cacheprovider tests/pages; \
	elif [ "$${CI:-}" = true ]; then echo "browser check: chromium is missing on CI (.ci/run installs it)"; exit 1; \
	else echo "browser check skipped: chromium not found (Debian: apt-get install chromium; .ci/run installs it)"; fi

# the book as one PDF: the single-page build, printed by headless Chromium (same scale rule and execution cache as
# make book: after make book it executes nothing, and it never writes to results/)
pdf: $(STAMP)
	rm -rf _build/pdf
	@cfg=$$($(BOOK_ENV) $(BIN)/python tools/book_cache.py config) && echo "execution cache: $$(dirname $$cfg)" && \
	$(CACHED_ENV) $(BIN)/jupyter-book build . --builder singlehtml --keep-going --path-output _build/pdf \
		--config $$cfg
	$(BIN)/python tools/browser.py pdf _build/pdf/_build/singlehtml/index.html _build/pdf/deepmr.pdf

# the simulation study at full length, resumable round by round; writes book/data/simulation_rounds.csv (every
# round's rows), simulation_study.csv (their summary) and simulation_study.json (provenance). The committed study
# has 50 rounds of "none" and "sequence-independent" (STUDY_ARGS="--rounds 50 --scenarios none sequence-independent");
# the default extends it to all four scenarios
STUDY_ARGS ?= --rounds 50
study: $(STAMP)
	$(BIN)/python tools/run_study.py $(STUDY_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_mr.py

clean:
	rm -rf _build results
