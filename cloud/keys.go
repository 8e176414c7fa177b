package cloud

import (
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/forestwatch/forest/wire"
)

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
	ext := wire.Ext(contentType)
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

// LegacyKey returns the key of a legacy image: prefix/name with the name's
// extension replaced by .png, after wire.SanitiseName.
func LegacyKey(prefix, name string) (string, error) {
	clean, err := wire.SanitiseName(name)
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
