# escape=`

# A Windows-style Dockerfile: the backtick escapes, backslashes are paths.
FROM mcr.microsoft.com/windows/servercore:ltsc2022
SHELL ["powershell", "-Command", "$ErrorActionPreference = Stop;"]
ENV TOOLS_DIR C:\tools
WORKDIR C:\app
COPY app\ C:\app\
RUN New-Item -ItemType Directory -Path C:\tools ; `
    Write-Host "installed to C:\tools" ; `
    Get-ChildItem C:\app
RUN ["cmd", "/S", "/C", "echo hello"]
USER ContainerUser
CMD ["C:\\app\\app.exe"]
