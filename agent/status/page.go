package status

import (
	"bytes"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/forestwatch/forest/internal/human"
	"github.com/forestwatch/forest/spool"
)

// Page serves the agent's HTTP endpoints: /metrics, /healthz, /readyz,
// /thumb/<frame id>.jpg and the status page at /.
type Page struct {
	// Registry holds the metrics served on /metrics.
	Registry *prometheus.Registry
	// Tracker is the agent's progress.
	Tracker *Tracker
	// Device, Version, Model, Source and Encoder (how frames are
	// re-encoded) are shown in the page's heading.
	Device, Version, Model, Source, Encoder string
	// Refresh is the page's auto-refresh interval.
	Refresh time.Duration
	// Spool reads the spool's statistics.
	Spool func() spool.Stats
	// Link reads the uplink's state.
	Link func() Link
	// Ready answers /readyz.
	Ready func() (bool, string)
	// ClockSynced says whether the clock can be trusted; nil leaves the
	// clock off the page.
	ClockSynced func() bool
	// KeptBytes is what done/, failed/ and the overlays hold; nil leaves
	// it off the page.
	KeptBytes func() int64
	// Budget, when set, reads the link budget (uplink.daily_bytes and
	// uplink.windows).
	Budget func() Budget
	// Log receives rendering errors.
	Log *slog.Logger
}

// Handler returns the handler of every endpoint.
func (p *Page) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.Registry, promhttp.HandlerOpts{Registry: p.Registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, why := p.Ready()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+why)
			return
		}
		fmt.Fprintln(w, "ready: "+why)
	})
	mux.HandleFunc("GET /thumb/{id}", func(w http.ResponseWriter, r *http.Request) {
		b := p.Tracker.Thumb(strings.TrimSuffix(r.PathValue("id"), ".jpg"))
		if b == nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "image/jpeg")
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(b)
	})
	mux.HandleFunc("GET /{$}", p.serveStatus)
	return mux
}

type pageData struct {
	Device    string
	Version   string
	Now       time.Time
	Refresh   int
	Link      Link
	Ready     bool
	Why       string
	Spool     spool.Stats
	Published uint64
	Frames    []Frame
	Chart     template.HTML
	Model     string
	Source    string
	Encoder   string
	// Clock is "synchronised", "NOT synchronised" or "" (unknown).
	Clock   string
	Kept    int64
	Evicted uint64
	Budget  Budget
}

var page = template.Must(template.New("status").Funcs(template.FuncMap{
	"pct":   func(f float64) string { return fmt.Sprintf("%.1f %%", f*100) },
	"bytes": human.Bytes,
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"age": func(d time.Duration) string { return d.Round(time.Second).String() },
	"ts":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{{.Refresh}}">
<title>forest-agent {{.Device}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafaf7}
h1{font-size:1.4em;margin:0 0 .3em} .sub{color:#666;margin-bottom:1em}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin-bottom:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.3em}
.ok{color:#1a7f37}.bad{color:#b42318}.warn{color:#9a6700}
.frames{display:flex;gap:.8em;flex-wrap:wrap}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4em;width:170px}
figure img{display:block;max-width:160px;max-height:160px}
figcaption{font-size:.8em;color:#444;word-break:break-all}
svg{background:#fff;border:1px solid #ddd;border-radius:6px}
</style></head><body>
<h1>forest-agent · {{.Device}}</h1>
<div class="sub">version {{.Version}} · model {{.Model}} · source {{.Source}}{{if .Encoder}} · encoding {{.Encoder}}{{end}} · updated <span id="updated">{{ts .Now}}</span> (refreshes every {{.Refresh}} s)</div>
<div class="cards">
<div class="card" id="link">link<b class="{{if .Link.Connected}}ok{{else if .Link.Offline}}warn{{else}}bad{{end}}">{{if .Link.Offline}}offline{{else}}{{.Link.State}}{{end}}</b>{{if not .Link.Offline}}since {{ago .Link.Since}}{{end}}{{if and .Link.LastError (not .Link.Connected)}}<br><small>{{.Link.LastError}}</small>{{end}}</div>
<div class="card" id="depth">spool depth<b>{{.Spool.Frames}}</b>frames ({{.Spool.InFlight}} in flight)</div>
<div class="card" id="bytes">spool bytes<b>{{bytes .Spool.Bytes}}</b>file {{bytes .Spool.FileBytes}}</div>
<div class="card" id="oldest">oldest frame<b>{{if .Spool.Frames}}{{age .Spool.OldestAge}}{{else}}—{{end}}</b>{{if .Spool.Frames}}{{ts .Spool.OldestCreated}}{{end}}</div>
{{with .Budget}}{{if .Enabled}}<div class="card" id="budget">link budget today<b class="{{if .Blocked}}warn{{else}}ok{{end}}">{{if .Daily}}{{bytes .Left}} left{{else}}no limit{{end}}</b>{{if .Daily}}{{bytes .Used}} of {{bytes .Daily}} sent; resets {{ts .Resets}}{{end}}{{if .Windows}}<br>windows (UTC): {{range $i, $w := .Windows}}{{if $i}}, {{end}}{{$w}}{{end}}{{end}}{{if .Blocked}}<br><small>waiting: {{.Blocked}} until {{ts .Until}}</small>{{end}}</div>{{end}}{{end}}
<div class="card" id="published">published<b>{{.Published}}</b>since start</div>
<div class="card" id="ready">ready<b class="{{if .Ready}}ok{{else}}bad{{end}}">{{if .Ready}}yes{{else}}no{{end}}</b><small>{{.Why}}</small></div>
{{if .Clock}}<div class="card" id="clock">clock<b class="{{if eq .Clock "synchronised"}}ok{{else}}warn{{end}}">{{.Clock}}</b>{{if ne .Clock "synchronised"}}<small>frames are marked clock_synced=false and kept past max_age</small>{{end}}</div>{{end}}
<div class="card" id="quarantine">quarantined<b class="{{if .Spool.Quarantined}}warn{{end}}">{{.Spool.Quarantined}}</b>{{range $r, $n := .Spool.QuarantinedBy}}{{$r}} {{$n}}<br>{{end}}</div>
<div class="card" id="evicted">evicted<b class="{{if .Evicted}}warn{{end}}">{{.Evicted}}</b>{{range $r, $n := .Spool.Evictions}}{{if $n}}{{$r}} {{$n}}<br>{{end}}{{end}}</div>
{{if .Kept}}<div class="card" id="kept">kept files<b>{{bytes .Kept}}</b>done/, failed/, overlays</div>{{end}}
</div>
<h2>Forest coverage over time</h2>
{{.Chart}}
<h2>Last frames</h2>
<div class="frames" id="frames">
{{range .Frames}}<figure class="frame" data-id="{{.ID}}"><img src="/thumb/{{.ID}}.jpg" alt="mask overlay of {{.Name}}" width="{{.Width}}" style="width:auto">
<figcaption><b>{{pct .Coverage}}</b> forest<br>{{.Name}}<br>{{.ID}} · {{bytes .Bytes}}<br>{{ts .Captured}}</figcaption></figure>
{{else}}<p>No frames yet.</p>{{end}}
</div>
</body></html>
`))

func (p *Page) serveStatus(w http.ResponseWriter, r *http.Request) {
	ok, why := p.Ready()
	frames, hist, published := p.Tracker.Snapshot()
	d := pageData{
		Device: p.Device, Version: p.Version, Now: time.Now(), Refresh: max(1, int(p.Refresh.Seconds())),
		Link: p.Link(), Ready: ok, Why: why, Spool: p.Spool(), Published: published, Frames: frames,
		Chart: coverageChart(hist), Model: p.Model, Source: p.Source, Encoder: p.Encoder,
	}
	for _, n := range d.Spool.Evictions {
		d.Evicted += n
	}
	if p.ClockSynced != nil {
		d.Clock = "NOT synchronised"
		if p.ClockSynced() {
			d.Clock = "synchronised"
		}
	}
	if p.KeptBytes != nil {
		d.Kept = p.KeptBytes()
	}
	if p.Budget != nil {
		d.Budget = p.Budget()
	}
	var buf bytes.Buffer
	if err := page.Execute(&buf, d); err != nil {
		p.Log.Error("render status page", "err", err)
		http.Error(w, "render status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(buf.Bytes())
}

// coverageChart draws coverage history as an inline SVG polyline.
func coverageChart(h []Point) template.HTML {
	const w, ht, pad = 600, 160, 24
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="coverage" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="forest coverage of the last %d frames">`, w, ht, w, ht, len(h))
	for _, y := range []float64{0, 0.5, 1} {
		py := float64(ht-pad) - y*float64(ht-2*pad)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="2" y="%.1f" font-size="10" fill="#888">%d%%</text>`, pad, py, w-4, py, py+3, int(y*100))
	}
	if len(h) > 0 {
		b.WriteString(`<polyline fill="none" stroke="#1a7f37" stroke-width="2" points="`)
		for i, p := range h {
			x := float64(pad)
			if len(h) > 1 {
				x += float64(i) * float64(w-pad-8) / float64(len(h)-1)
			}
			y := float64(ht-pad) - p.Coverage*float64(ht-2*pad)
			fmt.Fprintf(&b, "%.1f,%.1f ", x, y)
		}
		b.WriteString(`"/>`)
		for i, p := range h {
			if len(h) > 60 {
				break
			}
			x := float64(pad)
			if len(h) > 1 {
				x += float64(i) * float64(w-pad-8) / float64(len(h)-1)
			}
			y := float64(ht-pad) - p.Coverage*float64(ht-2*pad)
			fmt.Fprintf(&b, `<circle class="pt" cx="%.1f" cy="%.1f" r="3" fill="#1a7f37"/>`, x, y)
		}
	} else {
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#888">no frames yet</text>`, w/2-40, ht/2)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
