# Summarizes the output of `cargo test` (read from a log) on one screen: per test target its
# passed / failed / ignored counts and time, the names of the failed tests, the wall time, and a
# last line `N passed, N failed`. Exits 1 if a test failed, a target gave no result or nothing ran
# while cargo failed; 0 otherwise.
# A test target that printed no `test result:` (it crashed or was killed) counts as one failure.
# Usage: awk -v status=<cargo's exit status> -v wall=<seconds in all> -v cargo_wall=<seconds of
#        cargo test> -v logfile=<path> -f test-summary.awk LOG
# (scripts/test.sh runs it).

function flush_target() {
    if (cur == "") return
    if (!(cur in got)) {
        # The binary ran but never printed `test result:`: it crashed, was killed or hung up.
        nores[cur] = 1
        tfailed++
        nfail++
        why = (cur in reason) ? reason[cur] : "crashed or killed"
        fails[nfail] = cur ": exited without a result (" why "; see the log)"
    }
    cur = ""
}

function mmss(s) {
    s = int(s)
    return s >= 3600 ? sprintf("%dh %02dm %02ds", int(s / 3600), int(s % 3600 / 60), s % 60) \
                     : sprintf("%dm %02ds", int(s / 60), s % 60)
}

function field(line, name,    re, s) {
    re = "[0-9]+ " name
    if (match(line, re)) {
        s = substr(line, RSTART, RLENGTH)
        sub(/ .*/, "", s)
        return s + 0
    }
    return 0
}

function add_failed(name) {
    if ((cur SUBSEP name) in seen) return
    seen[cur SUBSEP name] = 1
    nfail++
    fails[nfail] = cur ": " name
}

{
    gsub(/\033\[[0-9;]*[A-Za-z]/, "")
    sub(/\r$/, "")
}

# `     Running unittests src/lib.rs (target/debug/deps/leasefs-…)`, `     Running tests/x.rs (…)`
/^ *Running .* \(.*\)$/ {
    flush_target()
    name = $0
    sub(/^ *Running /, "", name)
    sub(/ \([^()]*\)$/, "", name)
    cur = name
    ntargets++
    order[ntargets] = cur
    collecting = 0
    pending = ""
    stdout_names = ""
    next
}

cur != "" && /^failures:$/ { collecting = 1; pending = ""; next }
cur != "" && /^---- .* stdout ----$/ {
    collecting = 0
    n = $0
    sub(/^---- /, "", n)
    sub(/ stdout ----$/, "", n)
    stdout_names = stdout_names n "\n"
    next
}
cur != "" && collecting && /^    [^ ]/ { n = $0; sub(/^ +/, "", n); pending = pending n "\n"; next }
cur != "" && /^test .* \.\.\. FAILED$/ {
    n = $0
    sub(/^test /, "", n)
    sub(/ \.\.\. FAILED$/, "", n)
    dots_names = dots_names n "\n"
}

cur != "" && /test result: / {
    line = $0
    sub(/.*test result: /, "", line)
    p = field(line, "passed"); f = field(line, "failed"); ig = field(line, "ignored")
    t = ""
    if (match(line, /finished in [0-9.]+s/)) t = substr(line, RSTART + 12, RLENGTH - 12)
    passed[cur] = p; failed[cur] = f; ignored[cur] = ig; took[cur] = t
    got[cur] = 1
    tpassed += p; tfailed += f; tignored += ig
    # The last `failures:` block lists the failed tests; fall back to the `---- name stdout ----`
    # headers, then to `test name ... FAILED` lines.
    names = pending != "" ? pending : (stdout_names != "" ? stdout_names : dots_names)
    if (f > 0) {
        k = split(names, arr, "\n")
        listed = 0
        for (i = 1; i <= k; i++) if (arr[i] != "") { add_failed(arr[i]); listed++ }
        if (listed == 0) add_failed("(" f " failed; names not found in the output)")
    }
    collecting = 0; pending = ""; stdout_names = ""; dots_names = ""
    cur = ""
    next
}

# Cargo's word on a test binary that failed: `process didn't exit successfully: `…` (signal: 11, …)`.
cur != "" && /process didn't exit successfully: .*\)$/ {
    r = $0
    sub(/.*` \(/, "", r)
    sub(/\)$/, "", r)
    reason[cur] = r
}

# Compiler errors (shown when the build fails) and cargo's own errors.
/^error(\[E[0-9]+\])?: / { nerr++; if (nerr <= 15) errs[nerr] = $0 }
/^ +--> / && nerr > 0 && nerr <= 15 && !(nerr in loc) { loc[nerr] = $0 }

END {
    flush_target()
    rule = "=================================================================="
    print ""
    print rule
    print "test.sh summary (full output: " logfile ")"
    if (ntargets > 0) {
        printf "%-44s %7s %7s %7s %9s\n", "target", "passed", "failed", "ignored", "time"
        for (i = 1; i <= ntargets; i++) {
            t = order[i]
            if (t in nores)
                printf "%-44s %7s %7s %7s %9s  NO RESULT\n", t, "-", "-", "-", "-"
            else
                printf "%-44s %7d %7d %7d %9s%s\n", t, passed[t], failed[t], ignored[t], took[t], (failed[t] > 0 ? "  FAILED" : "")
        }
    }
    if (nfail > 0) {
        print ""
        print "failed:"
        for (i = 1; i <= nfail && i <= 30; i++) print "  " fails[i]
        if (nfail > 30) print "  … and " (nfail - 30) " more (see the log)"
    }
    bad = (tfailed > 0)
    if (ntargets == 0 && status != 0) {
        bad = 1
        print ""
        print "BUILD FAILED (cargo exit status " status "): no test ran."
        for (i = 1; i <= nerr && i <= 15; i++) {
            print "  " errs[i]
            if (i in loc) print "  " loc[i]
        }
        if (nerr > 15) print "  … and " (nerr - 15) " more errors (see the log)"
    } else if (ntargets == 0) {
        print ""
        print "no test target ran"
    } else if (status != 0 && tfailed == 0) {
        bad = 1
        print ""
        print "cargo failed (exit status " status ") although no test failed; see the log:"
        for (i = 1; i <= nerr && i <= 15; i++) print "  " errs[i]
    }
    print ""
    printf "wall time: %s (cargo test: %s); %d ignored\n", mmss(wall), mmss(cargo_wall), tignored
    printf "%d passed, %d failed\n", tpassed, tfailed
    exit bad ? 1 : 0
}
