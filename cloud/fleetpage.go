package cloud

import (
	"bytes"
	"context"
	"crypto/subtle"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/forestwatch/forest/internal/human"
	"github.com/forestwatch/forest/wire"
)

// routes adds the fleet page's endpoints to mux, each behind guard:
//
//	GET /fleet                                      one row per device
//	GET /fleet/device/{id}                          a device's last 24 h of frames
//	GET /fleet/thumb/{device}/{y}/{m}/{d}/{id}.jpg  a frame's thumbnail with its mask
func (f *fleet) routes(mux *http.ServeMux) {
	mux.Handle("GET /fleet", f.guard(http.HandlerFunc(f.serveFleet)))
	mux.Handle("GET /fleet/device/{id}", f.guard(http.HandlerFunc(f.serveDevice)))
	mux.Handle("GET /fleet/thumb/{device}/{y}/{m}/{d}/{file}", f.guard(http.HandlerFunc(f.serveThumb)))
}

// guard serves only clients from fleet.allow, and with fleet.token_file or
// fleet.basic_auth only those that send the secret.
func (f *fleet) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		addr := ap.Addr().Unmap()
		allowed := false
		for _, p := range f.allow {
			allowed = allowed || (err == nil && p.Contains(addr))
		}
		if !allowed {
			http.Error(w, "forbidden: the fleet page is served to the networks in fleet.allow only", http.StatusForbidden)
			return
		}
		if f.secret != "" && !f.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="forest fleet", charset="UTF-8"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'")
		h.ServeHTTP(w, r)
	})
}

func (f *fleet) authorized(r *http.Request) bool {
	eq := func(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
	if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return f.user == "" && eq(tok, f.secret)
	}
	u, p, ok := r.BasicAuth()
	return ok && (f.user == "" || eq(u, f.user)) && eq(p, f.secret)
}

// row is one device on the fleet page.
type row struct {
	ID, Seen, State, Version, Link, LinkErr, Skew string
	Silent, Never, SkewBad                        bool
	Frames                                        int
	Bytes, Oldest, Disk                           string
	Evicted, Quarantined                          uint64
	EvictedBy                                     string
	Chart                                         template.HTML
	Thumb, ThumbNote                              string
	DLQ                                           []count
}

type count struct {
	Reason string
	N      int
}

func counts(m map[string]int) []count {
	out := make([]count, 0, len(m))
	for r, n := range m {
		out = append(out, count{r, n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Reason < out[j].Reason })
	return out
}

func ago(d time.Duration) string {
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%d s ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%.1f h ago", d.Hours())
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

func span(d time.Duration) string { return strings.TrimSuffix(ago(d), " ago") }

// thumbURL is the page's address of a frame's thumbnail.
func thumbURL(sc *Sidecar) string {
	c := sc.CapturedAt.UTC()
	return fmt.Sprintf("/fleet/thumb/%s/%04d/%02d/%02d/%s.jpg", sc.Device, c.Year(), int(c.Month()), c.Day(), sc.FrameID)
}

func (f *fleet) serveFleet(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	devs := f.snapshot(now)
	census := f.census(now)
	// The newest frame of each device, looked up at most every
	// fleet.refresh, eight devices at a time, within 5 s in all.
	latest := make([]*Sidecar, len(devs))
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i, d := range devs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			latest[i] = f.latestFrame(ctx, d.ID, now)
		})
	}
	wg.Wait()
	cancel()
	rows := make([]row, 0, len(devs))
	silent := 0
	for i, d := range devs {
		rw := row{ID: d.ID, Silent: d.Silent, Never: d.Rec == nil, DLQ: counts(census.ByDevice[d.ID])}
		if d.Silent {
			silent++
		}
		if sc := latest[i]; sc != nil {
			rw.Thumb = thumbURL(sc)
			rw.ThumbNote = fmt.Sprintf("%s · %.0f %% forest · %s", sc.FrameID, sc.Coverage*100, sc.CapturedAt.UTC().Format("2006-01-02 15:04Z"))
		}
		if d.Rec != nil {
			s := d.Rec.Status
			rw.Seen, rw.State, rw.Version = ago(now.Sub(d.Rec.ReceivedAt)), s.State, s.Version
			rw.Frames, rw.Bytes = s.Spool.Frames, human.Bytes(s.Spool.Bytes)
			if !s.Spool.OldestAt.IsZero() {
				rw.Oldest = span(d.Rec.ReceivedAt.Sub(s.Spool.OldestAt))
			}
			var by []string
			for _, rs := range evictionReasons(s) {
				if n := s.Spool.Evicted[rs]; n > 0 {
					rw.Evicted += n
					by = append(by, fmt.Sprintf("%s %d", rs, n))
				}
			}
			rw.EvictedBy = strings.Join(by, ", ")
			for _, n := range s.Spool.Quarantined {
				rw.Quarantined += n
			}
			rw.Link, rw.LinkErr = s.Link.State, s.Link.LastError
			if s.Link.Reconnects > 0 {
				rw.Link += fmt.Sprintf(" (%d reconnects)", s.Link.Reconnects)
			}
			skew := s.SentAt.Sub(d.Rec.ReceivedAt)
			rw.SkewBad = skew > time.Minute || skew < -time.Minute || (s.ClockSynced != nil && !*s.ClockSynced)
			rw.Skew = fmt.Sprintf("%+.0f s", skew.Round(time.Second).Seconds())
			if s.ClockSynced != nil && !*s.ClockSynced {
				rw.Skew += " (not synced)"
			}
			if s.Disk != nil {
				rw.Disk = human.Bytes(int64(s.Disk.FreeBytes)) + " free"
			}
			rw.Chart = sparkline(s.Coverage.Hours, s.SentAt)
		}
		rows = append(rows, rw)
	}
	all := map[string]int{}
	for _, byReason := range census.ByDevice {
		for rs, n := range byReason {
			all[rs] += n
		}
	}
	data := map[string]any{
		"Now": now.UTC().Format("2006-01-02 15:04:05Z"), "Refresh": f.pageRefresh(), "Rows": rows,
		"Silent": silent, "SilentAfter": f.s.cfg.Fleet.SilentAfter, "DLQ": f.dlqMessages.Load(), "DLQByReason": counts(all),
		"DLQOther": counts(census.ByDevice[""]), "Census": census, "CensusAt": ago(now.Sub(census.At)),
	}
	f.render(w, fleetPage, data)
}

func (f *fleet) serveDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !wire.ValidID(id) || !f.known(id) {
		http.NotFound(w, r)
		return
	}
	now := time.Now()
	var dv deviceView
	for _, d := range f.snapshot(now) {
		if d.ID == id {
			dv = d
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	frames, total, err := f.recentFrames(ctx, id, now)
	type tile struct {
		URL, ID, At, Cov string
	}
	tiles := make([]tile, 0, len(frames))
	for i := len(frames) - 1; i >= 0; i-- { // newest first
		sc := frames[i]
		tiles = append(tiles, tile{URL: thumbURL(sc), ID: sc.FrameID, At: sc.CapturedAt.UTC().Format("01-02 15:04Z"), Cov: fmt.Sprintf("%.0f %%", sc.Coverage*100)})
	}
	var report string
	if dv.Rec != nil {
		var b bytes.Buffer
		fmt.Fprintf(&b, "received %s (%s), state %s, version %s, model %s, up since %s\n", dv.Rec.ReceivedAt.UTC().Format(time.RFC3339), ago(now.Sub(dv.Rec.ReceivedAt)),
			dv.Rec.Status.State, dv.Rec.Status.Version, dv.Rec.Status.Model, dv.Rec.Status.StartedAt.UTC().Format(time.RFC3339))
		report = b.String()
	}
	data := map[string]any{
		"ID": id, "Silent": dv.Silent, "Report": report, "Tiles": tiles, "Total": total, "Err": err,
		"Chart": template.HTML(""), "Refresh": f.pageRefresh(),
	}
	if dv.Rec != nil {
		data["Chart"] = sparkline(dv.Rec.Status.Coverage.Hours, dv.Rec.Status.SentAt)
		data["Status"] = dv.Rec.Status
	}
	f.render(w, devicePage, data)
}

func (f *fleet) serveThumb(w http.ResponseWriter, r *http.Request) {
	dev, file := r.PathValue("device"), r.PathValue("file")
	id, ok := strings.CutSuffix(file, ".jpg")
	y, ey := strconv.Atoi(r.PathValue("y"))
	m, em := strconv.Atoi(r.PathValue("m"))
	d, ed := strconv.Atoi(r.PathValue("d"))
	if !ok || !wire.ValidID(dev) || !wire.ValidID(id) || !f.known(dev) || ey != nil || em != nil || ed != nil ||
		y < 1970 || y > 9999 || m < 1 || m > 12 || d < 1 || d > 31 {
		http.NotFound(w, r)
		return
	}
	keys, err := KeysFor(f.s.cfg.S3.Prefix, dev, id, time.Date(y, time.Month(m), d, 12, 0, 0, 0, time.UTC), wire.JPEG)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	b, err := f.thumbnail(ctx, keys.Sidecar)
	if err != nil {
		f.log.Debug("thumbnail", "key", keys.Sidecar, "err", err)
		http.Error(w, "no thumbnail", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "image/jpeg")
	w.Header().Set("Cache-Control", "private, max-age=86400, immutable")
	w.Write(b)
}

// pageRefresh is the pages' auto-refresh interval in seconds: the
// interval at which a replica re-reads the stored reports.
func (f *fleet) pageRefresh() int { return max(1, int(f.s.cfg.Fleet.Refresh.Seconds())) }

func (f *fleet) render(w http.ResponseWriter, t *template.Template, data any) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		f.log.Error("render fleet page", "err", err)
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(buf.Bytes())
}

// sparkline draws the mean coverage of the 24 hours up to the report as a
// small inline SVG: a bar per hour with frames.
func sparkline(hours []wire.CoverageHour, at time.Time) template.HTML {
	const w, h = 120, 28
	end := at.UTC().Truncate(time.Hour)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="trend" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="forest coverage by hour, last 24 h">`, w, h, w, h)
	b.WriteString(`<line x1="0" y1="27.5" x2="120" y2="27.5" stroke="#ccc"/>`)
	for _, hr := range hours {
		i := 23 - int(end.Sub(hr.Start.UTC().Truncate(time.Hour))/time.Hour)
		if i < 0 || i > 23 {
			continue
		}
		bh := 1 + hr.Mean*float64(h-2)
		fmt.Fprintf(&b, `<rect class="hour" x="%d" y="%.1f" width="4" height="%.1f" fill="#1a7f37"><title>%s: %.0f %% (%d frames)</title></rect>`,
			i*5, float64(h-1)-bh, bh, hr.Start.UTC().Format("15:04Z"), hr.Mean*100, hr.Frames)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

const pageStyle = `<style>
body{font-family:system-ui,sans-serif;margin:1em;color:#222;background:#fafaf7}
h1{font-size:1.3em;margin:0 0 .2em}.sub{color:#666;margin-bottom:.8em;font-size:.9em}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{border-bottom:1px solid #e5e5e5;padding:.35em .5em;text-align:left;vertical-align:top}
th{background:#f0f0ea;font-weight:600}td.frame small{display:block;max-width:10em}
@media (max-width:760px){table,tbody,tr,td{display:block}tr.head{display:none}
tr.device{border:1px solid #ddd;border-radius:6px;margin-bottom:.7em;overflow:hidden}td{border:none;padding:.15em .6em}
td.name{font-size:1.1em;background:#f0f0ea;padding:.4em .6em}td.frame{float:right;padding:.4em}
td[data-l]::before{content:attr(data-l) ": ";color:#666}}
.silent .seen,.bad{color:#b42318;font-weight:600}.silent td:first-child{border-left:4px solid #b42318}
.ok{color:#1a7f37}small{color:#666}img.thumb{display:block;border-radius:3px}
.grid{display:flex;flex-wrap:wrap;gap:.5em}figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:4px;padding:.25em;width:160px}
figure img{display:block;width:160px;height:auto}figcaption{font-size:.75em;color:#444}
a{color:#0b5cad}
</style>`

var fleetPage = template.Must(template.New("fleet").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{{.Refresh}}"><title>forest fleet</title>` + pageStyle + `</head><body>
<h1>forest fleet</h1>
<div class="sub">{{len .Rows}} device(s), <span id="silent" class="{{if .Silent}}bad{{end}}">{{.Silent}} silent</span> (no report for {{.SilentAfter}} of their intervals) ·
dead-letter queue: <b id="dlq">{{if lt .DLQ 0}}?{{else}}{{.DLQ}}{{end}}</b>{{range .DLQByReason}} · {{.Reason}} {{.N}}{{end}}
{{if .Census.Scanned}}<small>(reasons of {{.Census.Scanned}} read {{.CensusAt}})</small>{{end}}{{if .Census.Err}}<small class="bad">{{.Census.Err}}</small>{{end}}
· updated {{.Now}}, refreshes every {{.Refresh}} s</div>
<table id="fleet">
<tr class="head"><th>device</th><th>latest frame</th><th>last seen</th><th>spool</th><th>oldest unsent</th><th>evicted</th><th>coverage, 24 h</th><th>dead letters</th><th>link · clock · disk</th></tr>
{{range .Rows}}<tr id="dev-{{.ID}}" class="device{{if .Silent}} silent{{end}}">
<td class="name"><a href="/fleet/device/{{.ID}}">{{.ID}}</a>{{if .Silent}} <b class="bad">silent</b>{{end}} <small>{{.Version}} {{.State}}</small></td>
<td class="frame">{{if .Thumb}}<a href="/fleet/device/{{.ID}}"><img class="thumb" src="{{.Thumb}}" alt="latest frame of {{.ID}} with its forest mask" width="120" height="120" loading="lazy"></a><small>{{.ThumbNote}}</small>{{else}}<small>no frame in the last 2 days</small>{{end}}</td>
<td data-l="last seen" class="seen">{{if .Never}}never{{else}}{{.Seen}}{{end}}</td>
<td data-l="spool"><b class="spool-frames">{{.Frames}}</b> frames <small>{{.Bytes}}</small></td>
<td data-l="oldest unsent" class="spool-oldest">{{if .Oldest}}{{.Oldest}}{{else}}—{{end}}</td>
<td data-l="evicted"><span class="evicted{{if .Evicted}} bad{{end}}" title="{{.EvictedBy}}">{{.Evicted}}</span>{{if .EvictedBy}} <small>{{.EvictedBy}}</small>{{end}}{{if .Quarantined}} <small class="bad">quarantined {{.Quarantined}}</small>{{end}}</td>
<td data-l="coverage">{{.Chart}}</td>
<td data-l="dead letters" class="dlq">{{range .DLQ}}<span class="bad">{{.Reason}} {{.N}}</span> {{else}}0{{end}}</td>
<td data-l="link"><small>{{.Link}}{{if .LinkErr}} · last error: {{.LinkErr}}{{end}} · <span class="{{if .SkewBad}}bad{{end}}">clock {{.Skew}}</span> · {{.Disk}}</small></td>
</tr>{{else}}<tr><td colspan="9">No device has reported yet.</td></tr>{{end}}
</table>
{{if .DLQOther}}<p><small>Dead letters of no known device: {{range .DLQOther}}{{.Reason}} {{.N}} {{end}}</small></p>{{end}}
</body></html>
`))

var devicePage = template.Must(template.New("device").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta http-equiv="refresh" content="{{.Refresh}}"><title>forest fleet · {{.ID}}</title>` + pageStyle + `</head><body>
<p><a href="/fleet">← fleet</a></p>
<h1 id="device" class="{{if .Silent}}bad{{end}}">{{.ID}}{{if .Silent}} · silent{{end}}</h1>
<div class="sub">{{if .Report}}{{.Report}}{{else}}never reported{{end}}</div>
{{with .Status}}<p>spool {{.Spool.Frames}} frames · published since start {{.Spool.Published}} ·
captured since start {{.Capture.Frames}}{{if .Capture.LastError}} · <span class="bad">capture: {{.Capture.LastError}}</span>{{end}}</p>{{end}}
<p>{{.Chart}}</p>
<h2>Frames of the last 24 h</h2>
<p id="count">{{.Total}} frame(s) stored{{if gt .Total (len .Tiles)}}; {{len .Tiles}} shown, evenly spread{{end}}.{{if .Err}} <span class="bad">{{.Err}}</span>{{end}}</p>
<div class="grid" id="frames">{{range .Tiles}}<figure><img src="{{.URL}}" alt="{{.ID}}" loading="lazy" width="160"><figcaption><b>{{.Cov}}</b> forest · {{.At}}<br>{{.ID}}</figcaption></figure>{{end}}</div>
</body></html>
`))
