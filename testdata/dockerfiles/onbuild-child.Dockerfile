# Triggers of the base image run at the start of this build.
FROM example.invalid/onbuild-base:latest
ENV APP_ENV=production
EXPOSE 8000
CMD ["gunicorn", "-b", "0.0.0.0:8000", "app:wsgi"]
