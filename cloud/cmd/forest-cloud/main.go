// Command forest-cloud consumes frame messages from RabbitMQ and stores them
// in S3 (see package github.com/forestwatch/forest/cloud).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"text/tabwriter"

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
  forest-cloud dlq list --config FILE [--limit N] [--reason CODE]
  forest-cloud dlq requeue --config FILE [--limit N] [--reason CODE]
  forest-cloud version

Examples:
  forest-cloud config check /etc/forest/cloud.yaml
  AMQP_PASSWORD=... forest-cloud run --config /etc/forest/cloud.yaml
  forest-cloud dlq list --config /etc/forest/cloud.yaml --limit 20
  forest-cloud dlq requeue --config /etc/forest/cloud.yaml --reason conflict

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
	dlqHelp = `Usage: forest-cloud dlq list --config FILE [--limit N] [--reason CODE]
       forest-cloud dlq requeue --config FILE [--limit N] [--reason CODE]

list prints the dead letters with their reason and detail; requeue moves
them back to the frames queue (after the cause is fixed), optionally only
those with one reason.

Examples:
  forest-cloud dlq list --config /etc/forest/cloud.yaml --limit 20
  forest-cloud dlq requeue --config /etc/forest/cloud.yaml --reason conflict
`
)

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
	if len(args) == 0 || (args[0] != "list" && args[0] != "requeue") {
		fmt.Fprint(stderr, dlqHelp)
		return 2
	}
	var opts cloud.DLQOptions
	cfg, code := loadFlags("dlq "+args[0], dlqHelp, args[1:], stdout, stderr, func(fs *flag.FlagSet) {
		fs.IntVar(&opts.Limit, "limit", 0, "look at most `N` messages (0: all)")
		fs.StringVar(&opts.Reason, "reason", "", "only dead letters with this reason `CODE`")
	})
	if cfg == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if args[0] == "requeue" {
		n, err := cloud.RequeueDeadLetters(ctx, cfg, opts)
		fmt.Fprintf(stdout, "requeued %d message(s) to %s\n", n, cfg.AMQP.Queue)
		if err != nil {
			fmt.Fprintf(stderr, "forest-cloud dlq requeue: %v\n", err)
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
