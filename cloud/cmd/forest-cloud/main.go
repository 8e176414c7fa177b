// Command forest-cloud consumes frame messages from RabbitMQ and stores them
// in S3 (see package github.com/forestwatch/forest/cloud).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/forestwatch/forest/cloud"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

const usage = `forest-cloud stores forest frames from RabbitMQ in S3.

Usage:
  forest-cloud run --config FILE             consume until SIGTERM
  forest-cloud config check FILE             validate a config file and exit
  forest-cloud dlq list --config FILE [--limit N] [--reason CODE] [--older-than AGE]
  forest-cloud dlq requeue --config FILE [--limit N] [--reason CODE] [--older-than AGE]
  forest-cloud dlq purge --config FILE (--reason CODE | --older-than AGE | --all) [--dry-run]
  forest-cloud dlq export --config FILE --dir DIR [--reason CODE] [--older-than AGE] [--keep]
  forest-cloud policy --config FILE          print the queue policy to apply
  forest-cloud queue migrate --config FILE   re-create a queue of an earlier version
  forest-cloud version

Examples:
  forest-cloud config check /etc/forest/cloud.yaml
  AMQP_PASSWORD=... forest-cloud run --config /etc/forest/cloud.yaml
  forest-cloud dlq list --config /etc/forest/cloud.yaml --limit 20
  forest-cloud dlq requeue --config /etc/forest/cloud.yaml --reason conflict
  forest-cloud dlq export --config /etc/forest/cloud.yaml --dir /var/tmp/dlq --older-than 7d
  forest-cloud policy --config /etc/forest/cloud.yaml

The config file is YAML with ${ENV} and ${ENV:-default} expansion; see
cloud.yaml beside this command's source for every key. S3 credentials and
region come from the standard AWS configuration (AWS_ACCESS_KEY_ID,
AWS_PROFILE, instance role, ...). On SIGTERM or SIGINT the consumer stops
taking messages, finishes those in flight (consumer.shutdown_timeout) and
exits; a second signal exits at once.

Exit status: 0 after a clean shutdown, 1 on a runtime or start-up error,
2 on a usage or configuration error.
`

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cloud.GCPercent)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version":
		fmt.Fprintf(stdout, "forest-cloud %s\n", version)
		return 0
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "config":
		if len(args) == 2 && isHelp(args[1]) || len(args) == 3 && isHelp(args[2]) {
			fmt.Fprint(stdout, configHelp)
			return 0
		}
		if len(args) != 3 || args[1] != "check" {
			fmt.Fprint(stderr, configHelp)
			return 2
		}
		if _, err := cloud.LoadConfig(args[2]); err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", args[2], err)
			return 2
		}
		fmt.Fprintf(stdout, "%s: ok\n", args[2])
		return 0
	case "dlq":
		return cmdDLQ(args[1:], stdout, stderr)
	case "policy":
		return cmdPolicy(args[1:], stdout, stderr)
	case "queue":
		return cmdQueue(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "forest-cloud: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// Help texts of the subcommands, printed by --help with their flags.
const (
	runHelp = `Usage: forest-cloud run --config FILE

Checks the broker, the queue topology and the S3 bucket, then consumes frame
messages and stores each frame's image, mask and sidecar in S3, acking a
message only after S3 holds every object. Serves /metrics, /healthz and
/readyz on http.listen. Stops on SIGTERM or SIGINT after finishing the
messages in flight.

Example:
  AMQP_PASSWORD=... forest-cloud run --config /etc/forest/cloud.yaml
`
	configHelp = `Usage: forest-cloud config check FILE

Reads FILE, expands ${ENV} references, applies defaults and validates every
field; prints "FILE: ok" or the problem, naming the field.

Example:
  forest-cloud config check /etc/forest/cloud.yaml
`
	dlqHelp = `Usage: forest-cloud dlq list --config FILE [--limit N] [--reason CODE] [--older-than AGE]
       forest-cloud dlq requeue --config FILE [--limit N] [--reason CODE] [--older-than AGE]
       forest-cloud dlq purge --config FILE (--reason CODE | --older-than AGE | --all) [--limit N] [--dry-run]
       forest-cloud dlq export --config FILE --dir DIR [--reason CODE] [--older-than AGE] [--limit N] [--keep]

list prints the dead letters with their reason and detail; requeue moves
them back to the frames queue (after the cause is fixed); purge deletes
them for good (--dry-run only counts); export writes each one's body and
its properties, headers and reason to DIR (NAME.body and NAME.json), then
removes it from the queue once both files are on disk (--keep leaves it).
--reason selects one reason code, --older-than those dead-lettered at
least AGE ago (a Go duration, or days: 7d).

Examples:
  forest-cloud dlq list --config /etc/forest/cloud.yaml --limit 20
  forest-cloud dlq requeue --config /etc/forest/cloud.yaml --reason conflict
  forest-cloud dlq purge --config /etc/forest/cloud.yaml --reason bad_json --older-than 30d --dry-run
  forest-cloud dlq export --config /etc/forest/cloud.yaml --dir /var/tmp/dlq-2026-06 --older-than 7d
`
	policyHelp = `Usage: forest-cloud policy --config FILE

Prints the RabbitMQ policy that carries the frames queue's settings
(amqp.delivery_limit, dead_letter_exchange, dead_letter_strategy,
max_length, max_length_bytes) as a rabbitmqctl command and as an entry for
a definitions file. Apply it once, and again after changing those keys:
a policy changes a running queue. forest-cloud declares the queue with
its type only and cannot set policies itself (AMQP has no way to).

Example:
  forest-cloud policy --config /etc/forest/cloud.yaml
`
	queueHelp = `Usage: forest-cloud queue migrate --config FILE

Re-creates the frames queue without the arguments (x-delivery-limit,
x-dead-letter-exchange) that versions before the policy declared it with,
which override the policy. Stop every forest-cloud replica first; devices
may keep publishing. Messages move through a temporary queue with
publisher confirms; run it again if it is interrupted.

Example:
  forest-cloud queue migrate --config /etc/forest/cloud.yaml
`
)

// parseAge parses a Go duration or a number of days ("7d").
func parseAge(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad age %q (want a duration such as 36h or days such as 7d)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad age %q (want a duration such as 36h or days such as 7d)", s)
	}
	return v, nil
}

// ageFlag is a flag.Value for --older-than.
type ageFlag struct{ d *time.Duration }

func (a ageFlag) String() string {
	if a.d == nil || *a.d == 0 {
		return ""
	}
	return a.d.String()
}

func (a ageFlag) Set(s string) error {
	v, err := parseAge(s)
	if err != nil {
		return err
	}
	*a.d = v
	return nil
}

func cmdPolicy(args []string, stdout, stderr io.Writer) int {
	cfg, code := loadFlags("policy", policyHelp, args, stdout, stderr, nil)
	if cfg == nil {
		return code
	}
	p := cloud.PolicyFor(cfg)
	entry, _ := json.MarshalIndent(p, "  ", "  ")
	fmt.Fprintf(stdout, `# The settings of queue %s, as RabbitMQ policy %q. Apply with:
%s

# or add to the "policies" of a definitions file:
  %s
`, cfg.AMQP.Queue, p.Name, p.Command(), entry)
	return 0
}

func cmdQueue(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, queueHelp)
		return 0
	}
	if len(args) == 0 || args[0] != "migrate" {
		fmt.Fprint(stderr, queueHelp)
		return 2
	}
	cfg, code := loadFlags("queue migrate", queueHelp, args[1:], stdout, stderr, nil)
	if cfg == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	n, err := cloud.MigrateQueue(ctx, cfg, func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) })
	if err != nil {
		fmt.Fprintf(stderr, "forest-cloud queue migrate: %v (after moving %d message(s); run it again)\n", err, n)
		return 1
	}
	return 0
}

// isHelp reports whether a is one of the flags that ask for help.
func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" }

// loadFlags parses a subcommand's flags and loads its config. With --help it
// prints help and the flags to stdout and returns code 0 and a nil config.
func loadFlags(name, help string, args []string, stdout, stderr io.Writer, extra func(*flag.FlagSet)) (*cloud.Config, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	path := fs.String("config", "", "config `FILE` (YAML)")
	if extra != nil {
		extra(fs)
	}
	for _, a := range args {
		if isHelp(a) {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil, 0
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, 2
	}
	if *path == "" {
		fmt.Fprintf(stderr, "forest-cloud %s: --config FILE is required (see forest-cloud %s --help)\n", name, name)
		return nil, 2
	}
	cfg, err := cloud.LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", *path, err)
		return nil, 2
	}
	return cfg, 0
}

func newLogger(c cloud.LogConfig, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	o := &slog.HandlerOptions{Level: lvl}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, o))
	}
	return slog.New(slog.NewJSONHandler(w, o))
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	cfg, code := loadFlags("run", runHelp, args, stdout, stderr, nil)
	if cfg == nil {
		return code
	}
	log := newLogger(cfg.Log, stderr)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(cloud.GCPercentFor(cfg))
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		s := <-sigs
		log.Info("signal received; shutting down", "signal", s.String())
		cancel()
		s = <-sigs
		log.Warn("second signal; exiting now", "signal", s.String())
		os.Exit(1)
	}()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	svc, err := cloud.New(ctx, cloud.Options{Config: cfg, Logger: log, Registry: reg, Version: version})
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	if err := svc.Run(ctx); err != nil {
		var se *cloud.StartupError
		if errors.As(err, &se) {
			fmt.Fprintf(stderr, "forest-cloud: start-up check %q failed: %v\n  fix: %s\n", se.Check, se.Err, se.Fix)
		}
		log.Error("stopped with error", "err", err)
		return 1
	}
	return 0
}

func cmdDLQ(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprint(stdout, dlqHelp)
		return 0
	}
	if len(args) == 0 || !slices.Contains([]string{"list", "requeue", "purge", "export"}, args[0]) {
		fmt.Fprint(stderr, dlqHelp)
		return 2
	}
	sub := args[0]
	var opts cloud.DLQOptions
	var dir string
	var all, keep bool
	cfg, code := loadFlags("dlq "+sub, dlqHelp, args[1:], stdout, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&opts.Limit, "limit", 0, "select at most `N` messages (0: all)")
		fs.StringVar(&opts.Reason, "reason", "", "only dead letters with this reason `CODE`")
		fs.Var(ageFlag{&opts.OlderThan}, "older-than", "only dead letters dead-lettered at least `AGE` ago (36h, 7d)")
		switch sub {
		case "purge":
			fs.BoolVar(&opts.DryRun, "dry-run", false, "count what would be purged, purge nothing")
			fs.BoolVar(&all, "all", false, "purge every dead letter (required when neither --reason nor --older-than is given)")
		case "export":
			fs.StringVar(&dir, "dir", "", "write the dead letters into `DIR` (made if missing)")
			fs.BoolVar(&keep, "keep", false, "leave the exported dead letters in the queue")
		}
	})
	if cfg == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch sub {
	case "requeue":
		n, err := cloud.RequeueDeadLetters(ctx, cfg, opts)
		fmt.Fprintf(stdout, "requeued %d message(s) to %s\n", n, cfg.AMQP.Queue)
		if err != nil {
			fmt.Fprintf(stderr, "forest-cloud dlq requeue: %v\n", err)
			return 1
		}
		return 0
	case "purge":
		if !all && opts.Reason == "" && opts.OlderThan == 0 {
			fmt.Fprintln(stderr, "forest-cloud dlq purge: give --reason, --older-than or --all (see forest-cloud dlq --help)")
			return 2
		}
		n, err := cloud.PurgeDeadLetters(ctx, cfg, opts)
		verb := "purged"
		if opts.DryRun {
			verb = "would purge (dry run)"
		}
		fmt.Fprintf(stdout, "%s %d dead letter(s) from %s\n", verb, n, cfg.AMQP.DeadLetterQueue)
		if err != nil {
			fmt.Fprintf(stderr, "forest-cloud dlq purge: %v\n", err)
			return 1
		}
		return 0
	case "export":
		if dir == "" {
			fmt.Fprintln(stderr, "forest-cloud dlq export: --dir DIR is required (see forest-cloud dlq --help)")
			return 2
		}
		opts.DryRun = keep
		n, err := cloud.ExportDeadLetters(ctx, cfg, opts, dir)
		verb := "exported and removed"
		if keep {
			verb = "exported (kept in the queue)"
		}
		fmt.Fprintf(stdout, "%s %d dead letter(s) to %s\n", verb, n, dir)
		if err != nil {
			fmt.Fprintf(stderr, "forest-cloud dlq export: %v\n", err)
			return 1
		}
		return 0
	}
	dls, err := cloud.ListDeadLetters(ctx, cfg, opts)
	if err != nil {
		fmt.Fprintf(stderr, "forest-cloud dlq list: %v\n", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MESSAGE_ID\tROUTING_KEY\tUSER\tBYTES\tDEAD_LETTERED_AT\tREASON\tDETAIL")
	for _, d := range dls {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.MessageID, d.RoutingKey, d.User, d.Bytes, d.DeadLetteredAt, d.Reason, d.Detail)
	}
	_ = tw.Flush()
	fmt.Fprintf(stdout, "%d dead letter(s) in %s\n", len(dls), cfg.AMQP.DeadLetterQueue)
	return 0
}
