"""Storage service: owns the S3 buckets, the schema index and batch result assembly."""

__version__ = "0.1.0"
