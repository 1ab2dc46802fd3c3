FROM alpine:3.19
COPY --form=build /out /out
