# A base image whose children build themselves.
FROM python:3.12-slim
WORKDIR /app
ONBUILD ARG PIP_INDEX_URL
ONBUILD COPY requirements.txt /app/
ONBUILD RUN pip install --no-cache-dir -r requirements.txt
ONBUILD COPY . /app
ONBUILD RUN <<EOF
python -m compileall -q /app
EOF
onbuild label stage=onbuild-child
CMD ["python", "-m", "app"]
