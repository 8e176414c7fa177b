package cloud

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// object is one object to write.
type object struct {
	kind        string // image, mask, sidecar, legacy
	key         string
	body        []byte
	contentType string
	sum         [32]byte
	// same reports whether existing content under key counts as this
	// object (nil: byte-identical by SHA-256).
	same func(existing []byte) bool
}

func newObject(kind, key, contentType string, body []byte) object {
	return object{kind: kind, key: key, body: body, contentType: contentType, sum: sha256.Sum256(body)}
}

// verifiedObject is newObject for a body whose hex SHA-256 was already
// verified (by wire.Decode), sparing a second hash of the bytes.
func verifiedObject(kind, key, contentType string, body []byte, hexSum string) object {
	o := object{kind: kind, key: key, body: body, contentType: contentType}
	if n, err := hex.Decode(o.sum[:], []byte(hexSum)); err != nil || n != len(o.sum) {
		return newObject(kind, key, contentType, body)
	}
	return o
}

// store writes objects to one bucket.
type store struct {
	c           *s3.Client
	bucket      string
	checksum    bool
	conditional bool
	timeout     time.Duration
	retryMin    time.Duration
	retryMax    time.Duration
	retryFor    time.Duration
	brk         *breaker
	m           *metrics
	log         *slog.Logger
}

// newS3Client builds the S3 client from the standard AWS configuration with
// the config's overrides.
func newS3Client(ctx context.Context, c *S3Config) (*s3.Client, aws.CredentialsProvider, *transports, error) {
	var opts []func(*awsconfig.LoadOptions) error
	if c.Region != "" {
		opts = append(opts, awsconfig.WithRegion(c.Region))
	}
	if c.Profile != "" {
		opts = append(opts, awsconfig.WithSharedConfigProfile(c.Profile))
	}
	if c.AccessKeyID != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, "")))
	}
	trs := &transports{}
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConns = c.MaxConns * 2
		t.MaxIdleConnsPerHost = c.MaxConns
		t.MaxConnsPerHost = c.MaxConns
		t.ResponseHeaderTimeout = c.RequestTimeout
		trs.add(t)
	})
	opts = append(opts, awsconfig.WithHTTPClient(hc))
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("load aws config: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
		o.UsePathStyle = c.PathStyle
		o.Retryer = aws.NopRetryer{} // store retries with its own backoff
		if c.Checksum == "none" {
			o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		}
	})
	return client, cfg.Credentials, trs, nil
}

// transports records the HTTP transports the SDK builds, so that Run can
// close their idle connections when it returns.
type transports struct {
	mu  sync.Mutex
	trs []*http.Transport
}

func (t *transports) add(tr *http.Transport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.trs = append(t.trs, tr)
}

// CloseIdleConnections closes the idle connections of every transport.
func (t *transports) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tr := range t.trs {
		tr.CloseIdleConnections()
	}
}

// put writes o and reports whether it was already there (a suppressed
// duplicate). A transient error is reported to the breaker, which probes
// S3: if S3 is out, put returns at once with an error matching ErrOutage
// (the failure is not the message's own); if S3 answers, the failure is
// the message's own and put retries with jittered exponential backoff for
// retryFor, then returns the last error. A conflict returns an error
// matching ErrConflict, which is never retried.
func (s *store) put(ctx context.Context, o object) (dup bool, err error) {
	var own time.Duration // time spent on the message's own failures
	delay := s.retryMin
	for attempt := 0; ; attempt++ {
		t0 := time.Now()
		dup, err = s.putOnce(ctx, o)
		if err == nil || errors.Is(err, ErrConflict) || ctx.Err() != nil {
			return dup, err
		}
		s.m.s3Errors.Inc()
		outage, werr := s.brk.failed(ctx)
		if werr != nil {
			return false, fmt.Errorf("put %s: %w", o.key, werr)
		}
		if outage {
			return false, fmt.Errorf("put %s: %w: %w", o.key, ErrOutage, err)
		}
		own += time.Since(t0)
		if own+delay > s.retryFor {
			return false, fmt.Errorf("put %s: gave up after %d attempts (%s of failures while S3 answered probes): %w", o.key, attempt+1, own.Round(time.Millisecond), err)
		}
		s.log.Debug("S3 write failed while S3 answers probes; retrying", "key", o.key, "err", err)
		s.m.s3Retries.Inc()
		// Full jitter between delay/2 and delay.
		d := delay/2 + rand.N(delay/2+1)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("put %s: %w", o.key, ctx.Err())
		case <-time.After(d):
		}
		own += d
		delay = min(delay*2, s.retryMax)
	}
}

func (s *store) putOnce(ctx context.Context, o object) (bool, error) {
	if !s.conditional {
		existing, found, err := s.get(ctx, o.key)
		if err != nil {
			return false, err
		}
		if found {
			return true, s.compare(o, existing)
		}
	}
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(o.key),
		Body:          bytes.NewReader(o.body),
		ContentLength: aws.Int64(int64(len(o.body))),
		ContentType:   aws.String(o.contentType),
	}
	if s.checksum {
		in.ChecksumAlgorithm = types.ChecksumAlgorithmSha256
		in.ChecksumSHA256 = aws.String(base64.StdEncoding.EncodeToString(o.sum[:]))
	}
	if s.conditional {
		in.IfNoneMatch = aws.String("*")
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var optFns []func(*s3.Options)
	if s.checksum {
		// The server verifies the body against x-amz-checksum-sha256, so
		// hashing it again for the signature (SigV4 payload hash) is
		// redundant work: sign the headers only.
		optFns = append(optFns, s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware))
	}
	t0 := time.Now()
	_, err := s.c.PutObject(rctx, in, optFns...)
	s.m.s3Put.Observe(time.Since(t0).Seconds())
	s.m.tick()
	if err == nil {
		return false, nil
	}
	if !isPreconditionFailed(err) {
		return false, fmt.Errorf("put %s: %w", o.key, err)
	}
	existing, found, err := s.get(ctx, o.key)
	if err != nil {
		return false, err
	}
	if !found { // deleted in between: try again
		return false, fmt.Errorf("put %s: precondition failed but object absent", o.key)
	}
	return true, s.compare(o, existing)
}

func (s *store) compare(o object, existing []byte) error {
	if o.same != nil {
		if o.same(existing) {
			return nil
		}
	} else if sha256.Sum256(existing) == o.sum {
		return nil
	}
	return fmt.Errorf("object %s (%d bytes) differs from the message's %s (%d bytes): %w", o.key, len(existing), o.kind, len(o.body), ErrConflict)
}

// get reads an existing object, verifying its stored checksum when the
// server returns one.
func (s *store) get(ctx context.Context, key string) ([]byte, bool, error) {
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	out, err := s.c.GetObject(rctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	s.m.tick()
	if err != nil {
		var nk *types.NoSuchKey
		if errors.As(err, &nk) || httpStatus(err) == http.StatusNotFound {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("get %s: %w", key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, 256<<20))
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", key, err)
	}
	return b, true, nil
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func isPreconditionFailed(err error) bool {
	if httpStatus(err) == http.StatusPreconditionFailed {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && ae.ErrorCode() == "PreconditionFailed"
}
