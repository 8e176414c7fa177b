// Command forest-agent is the on-device daemon of the forest monitoring
// pipeline: it captures frames, segments them, spools them and drains the
// spool to RabbitMQ. All logic lives in package agent; this file parses
// flags and calls it.
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
	"strings"
	"syscall"

	"github.com/forestwatch/forest/agent"
	_ "github.com/forestwatch/forest/internal/malloc" // one glibc malloc arena
)

const usage = `forest-agent — capture, segment, spool and send forest frames.

Usage:
  forest-agent <command> [flags] [args]

Commands:
  run        run the agent (daemon), or process what the source has now with --once
  config     check a configuration file
  segment    segment image files and print forest coverage
  spool      check or inspect a spool directory (agent stopped)
  version    print version, commit, Go and ONNX Runtime versions

Examples:
  forest-agent run --config /etc/forest-agent/agent.yaml
  forest-agent run --config agent/testdata/run.yaml --once
  forest-agent config check /etc/forest-agent/agent.yaml
  forest-agent segment --out /tmp/masks frame.jpg
  forest-agent spool stats --json /var/lib/forest-agent/spool
  forest-agent version

Run "forest-agent <command> --help" for the flags of a command.
`

// version and commit may be set with -ldflags "-X main.version=... -X
// main.commit=..." (the Makefile does); they override agent.Version and
// agent.Commit, which may be set the same way.
var version, commit string

func main() {
	if version != "" {
		agent.Version = version
	}
	if commit != "" {
		agent.Commit = commit
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "config":
		return cmdConfig(args[1:], stdout, stderr)
	case "segment":
		return cmdSegment(args[1:], stdout, stderr)
	case "spool":
		return cmdSpool(args[1:], stdout, stderr)
	case "version":
		return cmdVersion(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "forest-agent: unknown command %q\nRun \"forest-agent --help\" for the list of commands.\n", args[0])
	return 2
}

// flags returns a FlagSet whose -help prints the given text and the flags.
func flags(name, help string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), help)
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args; it returns an exit code and false when the command
// should stop (help requested: 0; bad flags: 2).
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "forest-agent %s: %v\n", fs.Name(), err)
		return 2, false
	}
	return 0, true
}

func logger(cfg *agent.Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(cfg.Log.Level))
	o := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// goMemoryLimit is run's soft limit on the Go heap. Without one the heap
// grows to twice the live data of the last collection before the next: a
// 12-MP frame holds about 50 MB at once (camera bytes, decoded frame,
// mask, spool record), and a stream of them peaked at 192 MB of RSS
// instead of 132 MB (BENCHMARKS.md, 12-MP frames).
const goMemoryLimit = 64 << 20

// goGCPercent is run's GOGC: the heap grows by half its live data between
// collections, not by all of it. On the 200-frame RSS run (a 1024² JPEG
// among small tiles, WebP re-encoding) the peak fell from 121 to 107 MB at
// the same frames per second.
const goGCPercent = 50

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flags("run", `Usage: forest-agent run --config FILE [--once]

Runs the agent: captures frames from the configured source, segments them,
spools them durably and sends them to the broker (uplink.url; empty means
offline). SIGTERM or SIGINT shuts down in order (stop capture, finish the
frame in flight, wait for confirms, close the connection, close the spool)
within shutdown_timeout; a second signal exits at once.

With --once it processes what the source has now (dir: the complete files
present), prints one line per frame and a summary, and exits without
publishing.

The Go heap is held to a soft limit of 64 MiB, so that a stream of 12-MP
frames stays within about 150 MB of RSS; a larger frame raises it to 5 bytes
per pixel, and collected when it has grown by half (GOGC=50). GOMEMLIMIT and
GOGC in the environment replace these (GOMEMLIMIT=off removes the limit).
The C libraries (ONNX Runtime, libwebp) share one glibc malloc arena unless
MALLOC_ARENA_MAX is set.

Examples:
  forest-agent run --config /etc/forest-agent/agent.yaml
  forest-agent run --config agent/testdata/run.yaml --once
`, stdout)
	cfgPath := fs.String("config", "/etc/forest-agent/agent.yaml", "configuration `file`")
	once := fs.Bool("once", false, "process what the source has now, print a summary and exit")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "forest-agent run: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := agent.LoadConfig(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "forest-agent run: %v\n", err)
		return 1
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(goGCPercent)
	}
	var memLimit int64
	if os.Getenv("GOMEMLIMIT") == "" {
		memLimit = goMemoryLimit
	}
	log := logger(cfg, stderr)
	a, err := agent.New(cfg, agent.Options{Logger: log, ConfigPath: *cfgPath, GoMemoryLimit: memLimit})
	if err != nil {
		fmt.Fprintf(stderr, "forest-agent run: %v\n", err)
		return 1
	}
	ctx, stop := signalContext(log)
	defer stop()
	if *once {
		sum, err := a.RunOnce(ctx, stdout)
		if err != nil {
			fmt.Fprintf(stderr, "forest-agent run --once: %v\n", err)
			return 1
		}
		if sum.Failed > 0 {
			return 1
		}
		return 0
	}
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped", "err", err)
		return 1
	}
	return 0
}

// signalContext is cancelled by the first SIGTERM or SIGINT; a second one
// exits the process at once.
func signalContext(log *slog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			log.Info("signal received, shutting down; send it again to exit at once", "signal", s.String())
			cancel()
		case <-done:
			return
		}
		select {
		case s := <-ch:
			log.Warn("second signal, exiting at once", "signal", s.String())
			os.Exit(130)
		case <-done:
		}
	}()
	return ctx, func() { signal.Stop(ch); close(done); cancel() }
}

func cmdVersion(args []string, stdout, stderr io.Writer) int {
	help := `Usage: forest-agent version [--config FILE]

Prints the agent's version and commit, the Go version and platform, and the
ONNX Runtime version with the path of the library it loaded: with --config,
the config's segment.library if set, else the default search
($ONNXRUNTIME_LIB, a checkout's .cache/onnxruntime, ../lib/forest-agent
beside the binary, the system's library path), and the WebP encoder it uses
(the system libwebp, or the slower built-in WebAssembly one without libwebp-dev).

Examples:
  forest-agent version
  forest-agent version --config /etc/forest-agent/agent.yaml
`
	fs := flags("version", help, stdout)
	cfgPath := fs.String("config", "", "agent config whose segment.library to load")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "forest-agent version: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	lib := ""
	if *cfgPath != "" {
		cfg, err := agent.LoadConfig(*cfgPath)
		if err != nil {
			fmt.Fprintf(stderr, "forest-agent version: %v\n", err)
			return 1
		}
		lib = cfg.Segment.Library
	}
	fmt.Fprint(stdout, agent.BuildInfo(lib))
	return 0
}

func cmdConfig(args []string, stdout, stderr io.Writer) int {
	help := `Usage: forest-agent config check FILE

Reads FILE, expands ${ENV} references, applies defaults and validates every
field. Prints "ok" or the first problem, naming the field, e.g.
  uplink.confirm_timeout: must be > 0 (got 0s)

Example:
  forest-agent config check /etc/forest-agent/agent.yaml
`
	fs := flags("config", help, stdout)
	if len(args) > 0 && args[0] == "check" {
		args = args[1:]
	} else if len(args) == 0 || !strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, help)
		return 2
	}
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprint(stderr, help)
		return 2
	}
	if _, err := agent.LoadConfig(fs.Arg(0)); err != nil {
		fmt.Fprintf(stderr, "forest-agent config check: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
	return 0
}

func cmdSegment(args []string, stdout, stderr io.Writer) int {
	fs := flags("segment", `Usage: forest-agent segment [--model M] [--pixel-size M] [--out DIR] [--json] IMAGE...

Segments each image and prints its forest coverage, size and time. With
--out it writes IMAGE.mask.png (0 = other, 255 = forest) and
IMAGE.overlay.png (forest tinted green) into DIR. With --json it prints one
JSON object per image: {"file","coverage","width","height","scale","ms",
"segment_ms","segment_cpu_ms","windows",...}: ms covers decoding and
segmenting, segment_ms segmenting alone, segment_cpu_ms the CPU time of all
threads while segmenting, windows the model runs it took (tiles of a large
frame). With --pixel-size (ground metres per pixel; a GeoTIFF's own wins) a
frame outside the model's range is resampled into it first ("scale").

Examples:
  forest-agent segment agent/testdata/frames/aerial/*
  forest-agent segment --json --out /tmp/masks frame.jpg
`, stdout)
	model := fs.String("model", agent.Default().Segment.Model, "ONNX model `file`; a bare file name is a shipped model")
	out := fs.String("out", "", "write mask and overlay PNGs into `dir`")
	asJSON := fs.Bool("json", false, "print JSON lines")
	threads := fs.Int("threads", 0, "ONNX Runtime threads (0: one per core)")
	pixelSize := fs.Float64("pixel-size", 0, "ground `metres` per pixel of the images (0: unknown)")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "forest-agent segment: no image given (see --help)")
		return 2
	}
	failed, err := segmentFiles(fs.Args(), segmentOptions{Model: *model, Threads: *threads, PixelSize: *pixelSize, OutDir: *out, JSON: *asJSON}, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "forest-agent segment: %v\n", err)
		return 1
	}
	if failed > 0 {
		return 1
	}
	return 0
}

func cmdSpool(args []string, stdout, stderr io.Writer) int {
	help := `Usage: forest-agent spool check [--json] [--repair] DIR
       forest-agent spool stats [--json] DIR

Works on a spool no agent holds (stop the agent first; a held spool gives
"spool in use"). check verifies every record and checksum and exits 1 when
it finds problems; --repair quarantines damaged records and salvages a
damaged file. stats prints frames, bytes, oldest frame and evictions.

Examples:
  forest-agent spool stats /var/lib/forest-agent/spool
  forest-agent spool check --repair /var/lib/forest-agent/spool
`
	if len(args) == 0 || (args[0] != "check" && args[0] != "stats") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprint(stdout, help)
			return 0
		}
		fmt.Fprint(stderr, help)
		return 2
	}
	sub := args[0]
	fs := flags("spool "+sub, help, stdout)
	asJSON := fs.Bool("json", false, "print JSON")
	repair := false
	if sub == "check" {
		fs.BoolVar(&repair, "repair", false, "repair what the check finds")
	}
	if code, ok := parse(fs, args[1:], stderr); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprint(stderr, help)
		return 2
	}
	dir := fs.Arg(0)
	if sub == "stats" {
		if err := spoolStats(dir, *asJSON, stdout); err != nil {
			fmt.Fprintf(stderr, "forest-agent spool stats: %v\n", err)
			return 1
		}
		return 0
	}
	ok, err := spoolCheck(dir, repair, *asJSON, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "forest-agent spool check: %v\n", err)
		return 1
	}
	if !ok && !repair {
		return 1
	}
	return 0
}
