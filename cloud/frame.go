package cloud

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"slices"
	"sync"
	"time"

	"github.com/forestwatch/forest/wire"
)

// Header names forest-cloud adds to the dead-lettered copy of a message.
const (
	// HeaderReason holds the Reason code.
	HeaderReason = "x-forest-reason"
	// HeaderReasonDetail holds the error text.
	HeaderReasonDetail = "x-forest-reason-detail"
	// HeaderUserID holds the original user_id (RabbitMQ refuses a
	// republished user_id that is not the publisher's).
	HeaderUserID = "x-forest-user-id"
	// HeaderRoutingKey holds the original routing key.
	HeaderRoutingKey = "x-forest-routing-key"
	// HeaderDeadLetteredAt holds the RFC 3339 time of dead-lettering.
	HeaderDeadLetteredAt = "x-forest-dead-lettered-at"
)

// SidecarSchema is the schema name in every sidecar.
const SidecarSchema = "forest.cloud.sidecar.v1"

// Sidecar is the JSON metadata object stored beside each frame.
type Sidecar struct {
	Schema      string       `json:"schema"`
	FrameID     string       `json:"frame_id"`
	Device      string       `json:"device"`
	Seq         uint64       `json:"seq"`
	CapturedAt  time.Time    `json:"captured_at"`
	ReceivedAt  time.Time    `json:"received_at"`
	SentAt      time.Time    `json:"sent_at,omitzero"`
	ContentType string       `json:"content_type"`
	Width       int          `json:"width"`
	Height      int          `json:"height"`
	Coverage    float64      `json:"coverage"`
	Model       string       `json:"model,omitempty"`
	Agent       string       `json:"agent,omitempty"`
	User        string       `json:"user,omitempty"`
	GPS         *wire.GPS    `json:"gps,omitempty"`
	Camera      *wire.Camera `json:"camera,omitempty"`
	// Source is what the device captured the frame from (a file name, a
	// camera URL or a command, cleaned by wire.CleanName) and SourceType
	// its kind (dir, http or exec); empty for frames of agents before
	// wire version 2.
	Source     string `json:"source,omitempty"`
	SourceType string `json:"source_type,omitempty"`
	// ClockUnsynced is true when the device's clock was not known to be
	// right at capture: CapturedAt (and the key's date) may be far off.
	ClockUnsynced bool       `json:"clock_unsynced,omitempty"`
	Image         ObjectRef  `json:"image"`
	Mask          *ObjectRef `json:"mask,omitempty"`
}

// ObjectRef names a stored object with its size and hex SHA-256.
type ObjectRef struct {
	Key    string `json:"key"`
	Bytes  int    `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// planned is the outcome of decoding one message: the objects to store in
// order, and a description for logs.
type planned struct {
	objects []object
	device  string
	id      string
	legacy  bool
}

// plan decodes and validates a message and returns the objects to store.
// Every refusal is a *PoisonError.
func (s *Service) plan(m wire.Message, now time.Time) (*planned, error) {
	if len(m.Body) > s.cfg.Consumer.MaxMessageBytes {
		return nil, poison(ReasonTooLarge, fmt.Errorf("body of %d bytes over %d: %w", len(m.Body), s.cfg.Consumer.MaxMessageBytes, ErrTooLarge))
	}
	if m.Type == "" && (m.ContentType == "" || m.ContentType == "application/json") {
		if !*s.cfg.Consumer.AcceptLegacy {
			return nil, poison(ReasonUnknownFormat, errors.New("legacy message and consumer.accept_legacy is false"))
		}
		if err := s.checkLegacyUser(m); err != nil {
			return nil, err
		}
		return s.planLegacy(m)
	}
	f, err := wire.Decode(m)
	if err != nil {
		var ve *wire.VersionError
		var ce *wire.ChecksumError
		switch {
		case errors.As(err, &ve):
			return nil, poison(ReasonSchema, err)
		case errors.As(err, &ce):
			return nil, poison(ReasonChecksum, err)
		default:
			return nil, poison(ReasonInvalid, err)
		}
	}
	if err := s.checkIdentity(m, f.Device); err != nil {
		return nil, err
	}
	if err := checkImage(f, s.cfg.Consumer.MaxPixels); err != nil {
		return nil, err
	}
	keys, err := KeysFor(s.cfg.S3.Prefix, f.Device, f.ID, f.Captured, f.ContentType)
	if err != nil {
		return nil, poison(ReasonInvalid, err)
	}
	p := &planned{device: f.Device, id: f.ID}
	img := verifiedObject("image", keys.Image, f.ContentType, f.Image, f.ImageSHA256)
	p.objects = append(p.objects, img)
	sc := Sidecar{
		Schema: SidecarSchema, FrameID: f.ID, Device: f.Device, Seq: f.Seq,
		CapturedAt: f.Captured.UTC(), ReceivedAt: now.UTC(), SentAt: f.Sent.UTC(),
		ContentType: f.ContentType, Width: f.Width, Height: f.Height, Coverage: f.Coverage,
		Model: f.Model, Agent: f.Agent, User: m.UserID, GPS: f.GPS, Camera: f.Camera,
		Source: f.Source, SourceType: f.SourceType, ClockUnsynced: f.ClockUnsynced,
		Image: ObjectRef{Key: keys.Image, Bytes: len(f.Image), SHA256: hex.EncodeToString(img.sum[:])},
	}
	if f.Mask != nil {
		mo := verifiedObject("mask", keys.Mask, wire.PNG, f.Mask, f.MaskSHA256)
		p.objects = append(p.objects, mo)
		sc.Mask = &ObjectRef{Key: keys.Mask, Bytes: len(f.Mask), SHA256: hex.EncodeToString(mo.sum[:])}
	}
	body, err := json.MarshalIndent(&sc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode sidecar: %w", err)
	}
	side := newObject("sidecar", keys.Sidecar, "application/json", body)
	// The sidecar holds the receipt time, so a redelivery writes different
	// bytes: it is the same object when it describes the same content.
	side.same = func(existing []byte) bool {
		var old Sidecar
		if json.Unmarshal(existing, &old) != nil {
			return false
		}
		return old.FrameID == sc.FrameID && old.Device == sc.Device && old.Image == sc.Image &&
			(old.Mask == nil) == (sc.Mask == nil) && (old.Mask == nil || *old.Mask == *sc.Mask)
	}
	p.objects = append(p.objects, side)
	return p, nil
}

func (s *Service) planLegacy(m wire.Message) (*planned, error) {
	png := s.cfg.Legacy.Format == LegacyPNG
	if png {
		// Converting is CPU work: more at once than there are CPUs only
		// holds more decoded images in memory.
		s.converting <- struct{}{}
		defer func() { <-s.converting }()
	}
	l, err := DecodeLegacy(m.Body, LegacyOptions{MaxBytes: s.cfg.Consumer.MaxMessageBytes, MaxPixels: s.cfg.Consumer.MaxPixels,
		PNG: png})
	if err != nil {
		return nil, err
	}
	ext := l.Ext
	if s.cfg.Legacy.Key == LegacyKeyName {
		ext = ""
	}
	key, err := LegacyKey(s.cfg.S3.LegacyPrefix, l.Name, ext)
	if err != nil {
		return nil, poison(ReasonUnsafeName, err)
	}
	return &planned{objects: []object{newObject("legacy", key, l.ContentType, l.Image)}, id: l.Name, legacy: true}, nil
}

// publisher returns the broker user who published m: its user_id, which
// the broker validated, or for a copy that forest-cloud itself published
// (requeued from the dead-letter queue, or parked during an S3 outage) the
// original user it recorded in x-forest-user-id.
func (s *Service) publisher(m wire.Message) string {
	user := m.UserID
	if s.ownUser != "" && user == s.ownUser {
		if orig, ok := m.Headers[HeaderUserID].(string); ok {
			user = orig
		}
	}
	return user
}

// checkLegacyUser refuses a legacy message whose publisher is not listed in
// legacy.users: it is checked before the body is decoded.
func (s *Service) checkLegacyUser(m wire.Message) error {
	user := s.publisher(m)
	if user != "" && slices.Contains(s.cfg.Legacy.Users, user) {
		return nil
	}
	if user == "" {
		return poison(ReasonLegacyUser, errors.New("legacy message without a user_id: old devices must set the AMQP user_id property to their broker user, listed in legacy.users"))
	}
	return poison(ReasonLegacyUser, fmt.Errorf("legacy message from broker user %q, which legacy.users does not list", user))
}

// checkIdentity refuses a frame whose publisher may not speak for device.
func (s *Service) checkIdentity(m wire.Message, device string) error {
	user := s.publisher(m)
	if user == "" {
		if *s.cfg.Identity.RequireUserID {
			return poison(ReasonIdentity, fmt.Errorf("frame for device %q has no user_id and identity.require_user_id is true", device))
		}
		return nil
	}
	if user == device || slices.Contains(s.cfg.Identity.Devices[user], device) {
		return nil
	}
	return poison(ReasonIdentity, fmt.Errorf("user %q may not publish for device %q", user, device))
}

// checkImage reads the image header and checks it against the message.
func checkImage(f *wire.Frame, maxPixels int) error {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(f.Image))
	if err != nil {
		return poison(ReasonNotImage, fmt.Errorf("read %s header: %v: %w", f.ContentType, err, ErrNotImage))
	}
	if want := map[string]string{wire.JPEG: "jpeg", wire.PNG: "png", wire.WebP: "webp"}[f.ContentType]; format != want {
		return poison(ReasonNotImage, fmt.Errorf("content type %s but the body is %s: %w", f.ContentType, format, ErrNotImage))
	}
	if err := checkPixels(cfg.Width, cfg.Height, maxPixels); err != nil {
		return err
	}
	if cfg.Width != f.Width || cfg.Height != f.Height {
		return poison(ReasonSizeMismatch, fmt.Errorf("headers say %dx%d, image is %dx%d", f.Width, f.Height, cfg.Width, cfg.Height))
	}
	if f.Mask != nil {
		mc, mf, err := image.DecodeConfig(bytes.NewReader(f.Mask))
		if err != nil || mf != "png" {
			return poison(ReasonNotImage, fmt.Errorf("mask is not a png: %w", ErrNotImage))
		}
		if err := checkPixels(mc.Width, mc.Height, maxPixels); err != nil {
			return err
		}
	}
	return nil
}

// storeAll writes the planned objects: all but the last (the image and the
// mask) concurrently, then the last (the sidecar), so that a stored sidecar
// means a complete frame; with s3.sidecar_last false, all at once. It
// reports how many objects were already there.
func (s *Service) storeAll(ctx context.Context, p *planned) (dups int, err error) {
	objs := p.objects
	dupOf := make([]bool, len(objs))
	errs := make([]error, len(objs))
	putAll := func(from, to int) error {
		if to-from == 1 {
			dupOf[from], errs[from] = s.store.put(ctx, objs[from])
		} else {
			var wg sync.WaitGroup
			for i := from; i < to; i++ {
				wg.Go(func() { dupOf[i], errs[i] = s.store.put(ctx, objs[i]) })
			}
			wg.Wait()
		}
		return pick(errs)
	}
	if *s.cfg.S3.SidecarLast && len(objs) > 1 {
		if err := putAll(0, len(objs)-1); err != nil {
			return 0, err
		}
		if err := putAll(len(objs)-1, len(objs)); err != nil {
			return 0, err
		}
	} else if err := putAll(0, len(objs)); err != nil {
		return 0, err
	}
	for i, o := range objs {
		if dupOf[i] {
			dups++
			s.m.duplicates.Inc()
		} else {
			s.m.objects.WithLabelValues(o.kind).Inc()
			s.m.bytes.Add(float64(len(o.body)))
		}
	}
	return dups, nil
}

// pick returns the error that decides a message's fate: a conflict (poison)
// before a transient error.
func pick(errs []error) error {
	var first error
	for _, err := range errs {
		if errors.Is(err, ErrConflict) {
			return poison(ReasonConflict, err)
		}
		if first == nil {
			first = err
		}
	}
	return first
}
