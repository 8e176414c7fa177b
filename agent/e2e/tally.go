package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/forestwatch/forest/cloud"
	"github.com/forestwatch/forest/wire"
)

// Stored is one frame found in S3 through its sidecar, with its objects
// read back and hashed.
type Stored struct {
	Sidecar     string
	FrameID     string
	Device      string
	ImageKey    string
	ImageSHA256 string // of the bytes read back
	MaskKey     string
	Source      string // the sidecar's source_type:source
	Problems    []string
}

// Keys lists every object key under prefix.
func Keys(ctx context.Context, c *s3.Client, bucket, prefix string) ([]string, error) {
	var keys []string
	p := s3.NewListObjectsV2Paginator(c, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys, nil
}

func get(ctx context.Context, c *s3.Client, bucket, key string) ([]byte, error) {
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

// StoredFrames reads every sidecar under prefix and checks that its image and
// mask exist with the SHA-256 the sidecar records, and that all three keys
// are the ones cloud.KeysFor gives for the frame's device, id, capture time
// and content type with the default key prefix "frames".
func StoredFrames(ctx context.Context, c *s3.Client, bucket, prefix string) ([]Stored, error) {
	keys, err := Keys(ctx, c, bucket, prefix)
	if err != nil {
		return nil, err
	}
	var out []Stored
	for _, k := range keys {
		if !strings.HasSuffix(k, ".json") {
			continue
		}
		b, err := get(ctx, c, bucket, k)
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", k, err)
		}
		var sc cloud.Sidecar
		st := Stored{Sidecar: k}
		if err := json.Unmarshal(b, &sc); err != nil {
			st.Problems = append(st.Problems, "sidecar is not JSON: "+err.Error())
			out = append(out, st)
			continue
		}
		st.FrameID, st.Device, st.ImageKey = sc.FrameID, sc.Device, sc.Image.Key
		st.Source = sc.SourceType + ":" + sc.Source
		want, err := cloud.KeysFor("frames", sc.Device, sc.FrameID, sc.CapturedAt, sc.ContentType)
		if err != nil {
			st.Problems = append(st.Problems, "no key for its metadata: "+err.Error())
		} else if k != want.Sidecar || sc.Image.Key != want.Image || (sc.Mask != nil && sc.Mask.Key != want.Mask) {
			st.Problems = append(st.Problems, fmt.Sprintf("keys %s, %s differ from the layout's %+v", k, sc.Image.Key, want))
		}
		img, err := get(ctx, c, bucket, sc.Image.Key)
		if err != nil {
			st.Problems = append(st.Problems, "image: "+err.Error())
		} else {
			st.ImageSHA256 = wire.Sum(img)
			if st.ImageSHA256 != sc.Image.SHA256 || len(img) != sc.Image.Bytes {
				st.Problems = append(st.Problems, "image differs from its sidecar")
			}
		}
		if sc.Mask == nil {
			st.Problems = append(st.Problems, "no mask")
		} else {
			st.MaskKey = sc.Mask.Key
			m, err := get(ctx, c, bucket, sc.Mask.Key)
			if err != nil {
				st.Problems = append(st.Problems, "mask: "+err.Error())
			} else if wire.Sum(m) != sc.Mask.SHA256 {
				st.Problems = append(st.Problems, "mask differs from its sidecar")
			}
		}
		out = append(out, st)
	}
	return out, nil
}
