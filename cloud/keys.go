package cloud

import (
	"fmt"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/forestwatch/forest/uplink/wire"
)

// MaxNameBytes bounds a sanitised legacy image name.
const MaxNameBytes = 256

// maxNameDepth bounds the number of path segments in a legacy image name.
const maxNameDepth = 8

// FrameKeys are the object keys of one wire frame.
type FrameKeys struct {
	Image, Mask, Sidecar string
}

// KeysFor returns the keys of a frame: prefix/device/yyyy/mm/dd/id.ext,
// id.mask.png and id.json (see the package comment). Device and id must be
// valid wire ids; contentType one of the wire image types.
func KeysFor(prefix, device, id string, captured time.Time, contentType string) (FrameKeys, error) {
	if !wire.ValidID(device) {
		return FrameKeys{}, fmt.Errorf("device %q: %w", device, ErrUnsafeName)
	}
	if !wire.ValidID(id) {
		return FrameKeys{}, fmt.Errorf("frame id %q: %w", id, ErrUnsafeName)
	}
	ext := extFor(contentType)
	if ext == "" {
		return FrameKeys{}, fmt.Errorf("content type %q: %w", contentType, ErrNotImage)
	}
	c := captured.UTC()
	dir := fmt.Sprintf("%s/%04d/%02d/%02d/%s", device, c.Year(), int(c.Month()), c.Day(), id)
	if prefix != "" {
		dir = prefix + "/" + dir
	}
	return FrameKeys{Image: dir + "." + ext, Mask: dir + ".mask.png", Sidecar: dir + ".json"}, nil
}

func extFor(contentType string) string {
	switch contentType {
	case wire.JPEG:
		return "jpg"
	case wire.PNG:
		return "png"
	case wire.WebP:
		return "webp"
	}
	return ""
}

// LegacyKey returns the key of a legacy image: prefix/name with the name's
// extension replaced by .png, after SanitiseKey.
func LegacyKey(prefix, name string) (string, error) {
	clean, err := SanitiseKey(name)
	if err != nil {
		return "", err
	}
	if ext := path.Ext(clean); ext != "" && ext != clean && !strings.HasSuffix(clean, "/"+ext) {
		clean = strings.TrimSuffix(clean, ext)
	}
	clean += ".png"
	if prefix != "" {
		clean = prefix + "/" + clean
	}
	return clean, nil
}

// SanitiseKey checks a client-supplied name for use in an S3 key and returns
// it unchanged, or an error matching ErrUnsafeName saying why it is refused.
// It refuses empty names, names over MaxNameBytes, invalid UTF-8, control
// and format characters, a leading "/", backslashes, empty, "." and ".."
// segments, more than 8 segments, and characters outside letters, digits,
// marks and " ._-+=@,:()~". The result is therefore a relative, normalised
// path that cannot escape the prefix it is joined to.
func SanitiseKey(name string) (string, error) {
	refuse := func(why string) (string, error) {
		return "", fmt.Errorf("name %q: %s: %w", truncate(name, 80), why, ErrUnsafeName)
	}
	switch {
	case name == "":
		return refuse("empty")
	case len(name) > MaxNameBytes:
		return refuse(fmt.Sprintf("longer than %d bytes", MaxNameBytes))
	case !utf8.ValidString(name):
		return refuse("not valid UTF-8")
	case strings.HasPrefix(name, "/"):
		return refuse("leading /")
	}
	for _, r := range name {
		switch {
		case r == '/':
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError:
			return refuse("control character")
		case r == '\\':
			return refuse("backslash")
		case unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
		case strings.ContainsRune(" ._-+=@,:()~", r):
		default:
			return refuse(fmt.Sprintf("character %q not allowed", r))
		}
	}
	segs := strings.Split(name, "/")
	if len(segs) > maxNameDepth {
		return refuse(fmt.Sprintf("more than %d path segments", maxNameDepth))
	}
	for _, s := range segs {
		switch {
		case s == "":
			return refuse("empty path segment")
		case s == "." || s == "..":
			return refuse("relative path segment")
		case strings.TrimSpace(s) != s:
			return refuse("segment starts or ends with a space")
		case strings.Contains(s, ".."):
			return refuse("contains ..")
		}
	}
	return name, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
