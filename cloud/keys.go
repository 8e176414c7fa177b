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

// LegacyKey returns the key of a legacy image: prefix/name after
// wire.SanitiseName. With ext set, the name's extension is replaced by it
// ("IMG_1.jpeg" and ext "png" make "IMG_1.png"); with ext empty the name is
// kept as sent, as the old service's key (key = image_name).
func LegacyKey(prefix, name, ext string) (string, error) {
	clean, err := wire.SanitiseName(name)
	if err != nil {
		return "", err
	}
	if ext != "" {
		if old := path.Ext(clean); old != "" && old != clean && !strings.HasSuffix(clean, "/"+old) {
			clean = strings.TrimSuffix(clean, old)
		}
		clean += "." + ext
	}
	if prefix != "" {
		clean = prefix + "/" + clean
	}
	return clean, nil
}
