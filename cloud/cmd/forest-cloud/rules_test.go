package main

import (
	"os"
	"os/exec"
	"testing"
)

// TestAlertRules checks the example alerting rules with promtool: they
// parse (check rules) and fire as their unit tests expect (test rules:
// device silent, spool growing, old backlog, evictions, dead letters).
// cloud's TestStatusReports checks that every metric they name exists.
func TestAlertRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool not found (CI is set, so this is a failure; apt-get install prometheus, or make deps)")
		}
		t.Skip("promtool not found; apt-get install prometheus (set CI=1 to make this a failure)")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %v: %v\n%s", args, err, out)
		}
		t.Logf("promtool %v:\n%s", args, out)
	}
}
